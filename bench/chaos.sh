#!/usr/bin/env bash
# Chaos benchmark (see bench/chaos.py): ./bench/chaos.sh [messages]
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/chaos.py "$@"
