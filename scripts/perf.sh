#!/usr/bin/env bash
# Installs the dependencies, builds m2n and runs m2n_perf (2 x 2 on the best transport present).
# Extra arguments go to m2n_perf, e.g. scripts/perf.sh -M 1 -N 1 --baseline mpi
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target m2n_perf
exec "$build/perftest/m2n_perf" "$@"
