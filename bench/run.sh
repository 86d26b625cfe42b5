#!/usr/bin/env bash
# Run the benchmarks with the project's virtual environment: bench/run.sh [--smoke] [...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m bench "$@"
