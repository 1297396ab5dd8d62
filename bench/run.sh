#!/usr/bin/env bash
# ./build.sh bench [SECONDS]: every benchmark, each printing its own table.
set -euo pipefail
cd "$(dirname "$0")/.."
bench/edge.sh "$@"
