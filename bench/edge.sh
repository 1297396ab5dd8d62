#!/usr/bin/env bash
# Edge benchmark (see bench/edge.py): ./bench/edge.sh [seconds per case]
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/edge.py "$@"
