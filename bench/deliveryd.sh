#!/usr/bin/env bash
# deliveryd benchmark (see bench/deliveryd.py): ./bench/deliveryd.sh [messages]
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/deliveryd.py "$@"
