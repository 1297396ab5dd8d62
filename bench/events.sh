#!/usr/bin/env bash
# Provider events in through nginx (see bench/events.py): ./bench/events.sh [seconds per case] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/events.py "$@"
