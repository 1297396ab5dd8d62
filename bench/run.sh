#!/usr/bin/env bash
# ./build.sh bench: every benchmark, each printing its own table.
set -euo pipefail
cd "$(dirname "$0")/.."
bench/edge.sh "$@"
bench/deliveryd.sh
bench/events.sh
bench/recover.sh
bench/chaos.sh
