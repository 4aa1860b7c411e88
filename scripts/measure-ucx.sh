#!/usr/bin/env bash
# The UCX tables of docs/PERFORMANCE.md: m2n over UCX shared memory and TCP beside Open MPI over
# the same UCX transports, 1 x 1 and 2 x 2, 8 B to 4 MB, one m2n_perf job per table.
#   scripts/measure-ucx.sh [BUILD_DIR] [OUT_DIR]      (run it on an otherwise idle machine)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=${2:-perf-results}
mkdir -p "$out"
perf="$build/perftest/m2n_perf"
[ -x "$perf" ] || { echo "measure-ucx: $perf not built (cmake --build $build --target m2n_perf)"; exit 2; }
for tls in shm tcp; do
  for shape in "1 1" "2 2"; do
    set -- $shape
    name="${tls}_$1x$2"
    extra=()
    [ "$tls" = tcp ] && extra=(env UCX_NET_DEVICES=lo)
    echo "measure-ucx: $name"
    env UCX_TLS="$tls,self" "${extra[@]}" "$perf" -M "$1" -N "$2" -b 8 -e 4M --baseline mpi \
      --json "$out/$name.json" > "$out/$name.txt"
  done
done
scripts/perf_table.py "$out"/shm_1x1.json "$out"/shm_2x2.json "$out"/tcp_1x1.json "$out"/tcp_2x2.json \
  > "$out/tables.md"
echo "measure-ucx: tables in $out/tables.md"
