#!/usr/bin/env bash
# ./build.sh bench [SECONDS]: every benchmark, each printing its own table.
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/python3 bench/edge.py "$@"
