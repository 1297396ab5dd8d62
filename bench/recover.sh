#!/usr/bin/env bash
# Recover benchmark (see bench/recover.py): ./bench/recover.sh [requests per measurement]
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/recover.py "$@"
