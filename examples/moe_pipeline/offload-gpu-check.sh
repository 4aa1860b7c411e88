#!/usr/bin/env bash
# Expert offloading on one GPU (issue 12, the GPU half), in one call:
#   1. the GPU tests: the CUDA expert cache's outputs bit-equal to every expert resident on the
#      trained tiny model (moe_offload_test, OffloadedExpertsTest.*/cuda), and the single process
#      with --offload on the cuda backend against the reference (moe_pipeline_test, SingleProcess*);
#   2. the routing trace of the trained tiny model (moe_pipeline --trace over
#      models/mixtral-8x7b-tiny.prompts, on the CPU: about 20 s);
#   3. moe_offload_bench (Mixtral-8x7B expert shapes, the trace's held-out prompts replayed, every
#      policy x cache size x batch): its markdown table in $OUT/offload-bench.md. Default run under
#      4 minutes on an H100; QUICK=1 runs its 30-second smoke instead.
# Called by scripts/gpu-check.sh when OFFLOAD=1 (its default); can run alone:
#   examples/moe_pipeline/offload-gpu-check.sh   BUILD_DIR (default build-gpu), OUT (default
#                                                $BUILD_DIR/offload-results), QUICK=1, BENCH_ARGS
#                                                (more moe_offload_bench flags, e.g. "--layers 4")
# Exit status: non-zero if the build, a test or the bench failed; every step still runs.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
build=${BUILD_DIR:-build-gpu}
out=${OUT:-$build/offload-results}
here=examples/moe_pipeline
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "[offload gpu-check] $1: $(( $(date +%s) - t0 )) s"; }
if ! nvidia-smi -L > /dev/null 2>&1; then
  echo "[offload gpu-check] no GPU (nvidia-smi -L failed)" >&2
  exit 2
fi
targets=(moe_pipeline moe_offload_bench moe_offload_test moe_pipeline_test)
if ! { [ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release \
         -DCMAKE_CUDA_ARCHITECTURES=90; } > "$out/build.log" 2>&1 ||
   ! cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" >> "$out/build.log" 2>&1; then
  tail -30 "$out/build.log"
  echo "[offload gpu-check] BUILD FAILED"
  exit 1
fi
stamp "build"
rc=0
bin=$build/$here
timeout 300 "$bin/tests/moe_offload_test" --gtest_filter='*OffloadedExpertsTest*' > "$out/tests.log" 2>&1 || rc=1
timeout 300 "$bin/tests/moe_pipeline_test" --gtest_filter='*SingleProcess*' >> "$out/tests.log" 2>&1 || rc=1
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[       OK|^\[  FAILED|^\[  SKIPPED" "$out/tests.log"
stamp "GPU tests (rc $rc)"

trace=$out/mixtral-8x7b-tiny.trace
if ! timeout 300 "$bin/moe_pipeline" --config mixtral-8x7b-tiny --weights "$here/models/mixtral-8x7b-tiny.safetensors" \
       --trace "$trace" --prompts "$here/models/mixtral-8x7b-tiny.prompts" > "$out/trace.log" 2>&1; then
  cat "$out/trace.log"
  echo "[offload gpu-check] recording the trace FAILED"
  exit 1
fi
stamp "trace"

args=(--trace "$trace")
[ "${QUICK:-0}" = 1 ] && args+=(--quick)
# shellcheck disable=SC2206
args+=(${BENCH_ARGS:-})
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv > "$out/gpu.log" 2>&1 || true
echo "[offload gpu-check] moe_offload_bench ${args[*]}"
if ! timeout 420 "$bin/moe_offload_bench" "${args[@]}" > "$out/offload-bench.md" 2> "$out/offload-bench.log"; then
  rc=1
  tail -20 "$out/offload-bench.log"
fi
cat "$out/gpu.log" "$out/offload-bench.md"
stamp "bench (rc $rc)"
exit $rc
