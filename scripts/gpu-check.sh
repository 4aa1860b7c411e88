#!/usr/bin/env bash
# On a GPU machine, in one run: builds m2n (no UCX needed), runs the GPU tests (cuda_ipc_gpu_test,
# device_api_gpu_test, ep_gpu_test: the expert-parallel layer's stream-ordered calls; verbs_gpu_test where
# libibverbs is, skipping without a NIC), the producer-to-consumer latency (m2n_gpu_latency: device API
# vs stream-ordered calls vs NCCL, table in $OUT/gpu-latency.md), then the m2n_perf
# sweep 4 KB..16 MB for 2x2, 3x1 and 1x3 with the NCCL baseline, and writes the tables: first with
# m2n's stream-ordered calls, then with its host-driven calls through the cuda_ipc copy proxy
# (M2N_CUDA_IPC_PROXY=1, M2N_PERF_GPU_PATH=host), each against NCCL in the same run.
#   OUT       where logs, JSON and tables go (default: gpu-results)
#   BUILD_DIR build folder (default: build-gpu); JOBS (default: nproc)
#   ITERS / WARMUP  m2n_perf -n / -w (default 2000 / 200)
#   LATENCY_ITERS / LATENCY_WARMUP  m2n_gpu_latency -n / -w (default 2000 / 200); SKIP_LATENCY=1 skips it
#   EP_SHAPES / EP_ARGS  m2n_ep_gpu_perf's shapes (default "2x2 3x1 1x3") and flags; SKIP_EP=1 skips it
#   SHAPES    default "2x2 3x1 1x3"; SKIP_TESTS=1 skips the tests; SKIP_PROXY=1 skips the proxy sweeps;
#             SKIP_SWEEPS=1 skips the floor and every m2n_perf sweep
#   MOE       1 (default): then runs examples/moe_pipeline/gpu-check.sh (the MoE pipeline on 4 GPUs:
#             bf16 check against the reference, Mixtral shapes, ping-pong and the collocated baseline;
#             with fewer GPUs its single-GPU mode: the device path's bf16 checks, ranks sharing a GPU;
#             its own knobs BATCHES, INPUT_LEN, OUTPUT_LEN, RUN_TIMEOUT); 0 skips it
#   OFFLOAD   1 (default): then runs examples/moe_pipeline/offload-gpu-check.sh (expert offloading on
#             one GPU: the CUDA expert cache's tests and the timed run moe_offload_bench, under 4
#             minutes; QUICK=1 there for its 30-second smoke); 0 skips it
#   WERROR    ON to fail on warnings (default OFF: GCC 13 on Ubuntu 24.04 warns falsely in -O3 code)
#   CMAKE_ARGS more cmake options, e.g. "-DM2N_WITH_VERBS=OFF" (split on spaces)
#   TEST_TIMEOUT / SWEEP_TIMEOUT  seconds for the test binary / each m2n_perf run (default 600)
# Exit status: non-zero if the build, a test or a sweep failed (the later steps still run).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
build=${BUILD_DIR:-build-gpu}
jobs=${JOBS:-$(nproc)}
iters=${ITERS:-2000}
warmup=${WARMUP:-200}
shapes=${SHAPES:-"2x2 3x1 1x3"}
mkdir -p "$out"
# NVLink multicast (NVLS) stays off: it can take the host's shared GPUs down.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
status=0
t0=$(date +%s)
stamp() { echo "[gpu-check] $1: $(( $(date +%s) - t0 )) s"; }

{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv || true
  nvidia-smi topo -m || true
  nvcc --version | tail -1 || true
} > "$out/machine.log" 2>&1
cat "$out/machine.log"

# NCCL: the system's, or the one in Python's nvidia-nccl wheel (its library has no unversioned name).
nccl_args=()
if ! ls /usr/include/nccl.h /usr/local/cuda/include/nccl.h > /dev/null 2>&1; then
  nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null \
             || python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "nccl"))' 2>/dev/null || true)
  if [ -n "$nccl_dir" ] && [ -f "$nccl_dir/include/nccl.h" ]; then
    lib=$(ls "$nccl_dir"/lib/libnccl.so* | head -1)
    mkdir -p "$build/nccl-shim"
    ln -sf "$lib" "$build/nccl-shim/libnccl.so"
    nccl_args=(-DM2N_NCCL_INCLUDE_DIR="$nccl_dir/include" -DM2N_NCCL_LIBRARY="$build/nccl-shim/libnccl.so")
    export LD_LIBRARY_PATH="$nccl_dir/lib:${LD_LIBRARY_PATH:-}"
    echo "[gpu-check] NCCL from $nccl_dir"
  fi
fi

# Only what this script runs is built.
if ! { cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DM2N_WERROR=${WERROR:-OFF} -DCMAKE_CUDA_ARCHITECTURES=90 \
         "${nccl_args[@]}" ${CMAKE_ARGS:-} && \
       cmake --build "$build" -j "$jobs" --target m2n_perf m2n_gpu_floor m2n_gpu_latency cuda_ipc_gpu_test device_api_gpu_test ep_gpu_test m2n_ep_gpu_perf \
         $([ "${MOE:-1}" = 0 ] || echo moe_pipeline moe_pipeline_test) \
         $([ "${OFFLOAD:-1}" = 0 ] || echo moe_pipeline moe_offload_bench moe_offload_test moe_pipeline_test); \
     } > "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  echo "[gpu-check] BUILD FAILED"
  exit 1
fi
grep -A12 "m2n configuration" "$out/build.log"
stamp "build"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  if ! timeout "${TEST_TIMEOUT:-600}" "$build/tests/cuda_ipc_gpu_test" > "$out/gpu-tests.log" 2>&1; then status=1; fi
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[       OK|^\[  FAILED" "$out/gpu-tests.log" | tail -20
  if ! timeout "${TEST_TIMEOUT:-600}" "$build/tests/device_api_gpu_test" > "$out/device-api-tests.log" 2>&1; then status=1; fi
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[       OK|^\[  FAILED" "$out/device-api-tests.log" | tail -20
  # verbs on the GPU (stream path, device-side API through the proxy): built where libibverbs is;
  # without an RDMA NIC beside the GPU its tests skip, saying why.
  if cmake --build "$build" -j "$jobs" --target verbs_gpu_test >> "$out/build.log" 2>&1; then
    if ! timeout "${TEST_TIMEOUT:-600}" "$build/tests/verbs_gpu_test" > "$out/verbs-gpu-tests.log" 2>&1; then status=1; fi
    grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[       OK|^\[  FAILED|no RDMA NIC" "$out/verbs-gpu-tests.log" | tail -8
  else
    echo "[gpu-check] verbs_gpu_test not built (no libibverbs here?): build.log"
  fi
  stamp "GPU tests"
  # The expert-parallel layer's stream-ordered calls (ranks as processes sharing the GPUs present).
  if ! timeout "${TEST_TIMEOUT:-600}" "$build/tests/ep_gpu_test" > "$out/ep-gpu-tests.log" 2>&1; then status=1; fi
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[       OK|^\[  FAILED" "$out/ep-gpu-tests.log" | tail -24
  stamp "EP GPU tests"
fi

# Producer kernel end -> consumer kernel start between two ranks (perftest/gpu_latency.cc): one GPU
# shared by both processes, or one GPU each when there are two or more (the tool picks rank % GPUs).
if [ "${SKIP_LATENCY:-0}" != 1 ]; then
  if ! timeout "${SWEEP_TIMEOUT:-600}" "$build/perftest/m2n_gpu_latency" -n "${LATENCY_ITERS:-2000}" \
        -w "${LATENCY_WARMUP:-200}" > "$out/gpu-latency.md" 2> "$out/gpu-latency.log"; then
    status=1
    echo "[gpu-check] m2n_gpu_latency FAILED"
    tail -20 "$out/gpu-latency.log"
  fi
  cat "$out/gpu-latency.md"
  stamp "latency"
fi

# The expert-parallel layer's dispatch / combine per call against NCCL (perftest/ep_gpu_perf.cc),
# per shape in EP_SHAPES (default "2x2 3x1 1x3"); EP_ARGS more flags (e.g. "--tokens 128 -n 50").
# With fewer GPUs than ranks the NCCL columns are left out (NCCL takes one GPU per rank).
if [ "${SKIP_EP:-0}" != 1 ]; then
  for shape in ${EP_SHAPES:-2x2 3x1 1x3}; do
    # shellcheck disable=SC2086
    if ! timeout "${SWEEP_TIMEOUT:-600}" "$build/perftest/m2n_ep_gpu_perf" -M "${shape%x*}" -N "${shape#*x}" \
          ${EP_ARGS:-} > "$out/ep-gpu-$shape.md" 2> "$out/ep-gpu-$shape.log"; then
      status=1
      echo "[gpu-check] m2n_ep_gpu_perf $shape FAILED"
      tail -20 "$out/ep-gpu-$shape.log"
    fi
    cat "$out/ep-gpu-$shape.md"
    stamp "EP benchmark $shape"
  done
fi

if [ "${SKIP_SWEEPS:-0}" = 1 ]; then
  echo "[gpu-check] SKIP_SWEEPS=1: no floor, no m2n_perf sweeps"
else
# Where the time goes, without m2n: launch, cross-GPU flag, flag + 4 KB (perftest/gpu_floor.cu).
timeout 120 "$build/perftest/m2n_gpu_floor" 5000 > "$build/floor.log" 2>&1 || status=1
cat "$build/floor.log"
stamp "floor"

# m2n_perf prints the three slowest iterations of every size to the log (M2N_PERF_TRACE_MAX).
export M2N_PERF_TRACE_MAX=1
sweep_log="$out/sweep.log"
: > "$sweep_log"
tables=()
sweep() {  # sweep SHAPE SUFFIX [ENV=VALUE...]: one m2n_perf run against NCCL
  local shape=$1 suffix=$2; shift 2
  local m=${shape%x*} n=${shape#*x}
  echo "[gpu-check] sweep $shape$suffix $*" >> "$sweep_log"
  if ! env "$@" timeout "${SWEEP_TIMEOUT:-600}" "$build/perftest/m2n_perf" --use_cuda --baseline nccl -M "$m" -N "$n" -b 4K -e 16M \
        -n "$iters" -w "$warmup" --json "$out/gpu_${shape}${suffix}.json" >> "$sweep_log" 2>&1; then
    status=1
    echo "[gpu-check] sweep $shape$suffix FAILED" | tee -a "$sweep_log"
    tail -20 "$sweep_log"
  fi
  tables+=("$shape$suffix")
  stamp "sweep $shape$suffix"
}
for shape in $shapes; do sweep "$shape" ""; done
if [ "${SKIP_PROXY:-0}" != 1 ]; then
  # The copy proxy ends after 5 ms without work, so NCCL's rows run without it after their warmup.
  # A blocked host-driven call asks the bootstrap store whether a peer died every
  # M2N_LIVENESS_CHECK_MS (200): a TCP round trip inside the timed part now and then; 10 s here.
  proxy_env=(M2N_PERF_GPU_PATH=host M2N_CUDA_IPC_PROXY=1 M2N_CUDA_IPC_PROXY_IDLE_MS=5 M2N_LIVENESS_CHECK_MS=10000)
  for shape in $shapes; do sweep "$shape" "_proxy" "${proxy_env[@]}"; done
  for shape in $shapes; do sweep "$shape" "_proxydb" "${proxy_env[@]}" M2N_CUDA_IPC_PROXY_DOORBELL=1; done
fi
grep "slowest" "$sweep_log" > "$out/slowest.log" || true

python3 - "$out" "$build/floor.log" "${tables[@]}" > "$out/gpu-tables.md" <<'PY'
import json, os, sys
out, floor, shapes = sys.argv[1], sys.argv[2], sys.argv[3:]
if os.path.exists(floor):
    print("#### Floor without m2n (m2n_gpu_floor)\n\n```\n" + open(floor).read().strip() + "\n```\n")
for shape in shapes:
    path = os.path.join(out, f"gpu_{shape}.json")
    if not os.path.exists(path):
        print(f"#### {shape}: no results\n"); continue
    d = json.load(open(path)); c = d["config"]
    if shape.endswith("_proxy") or shape.endswith("_proxydb"):
        print("m2n rows: host-driven Send / Receive, payload moved by the cuda_ipc copy proxy kernel" +
              (" (doorbell polling)" if shape.endswith("db") else "") + "\n")
    rows = {}
    for r in d["rows"]:
        rows.setdefault(r["bytes"], {})[r["impl"]] = r
    print(f"#### [{shape}] {c['senders']} x {c['receivers']}: m2n {c['transport']} vs {c.get('nccl_library')}, "
          f"{c['iters']} + {c['warmup_iters']} iterations, check {'on' if c['check'] else 'off'}, "
          f"#wrong {d['total_wrong']}\n")
    print("| bytes | m2n p50 | NCCL p50 | p50 x | m2n p99 | NCCL p99 | p99 x | m2n max | NCCL max | max x "
          "| m2n GB/s | NCCL GB/s | GB/s x |")
    print("|---:|" + "---:|" * 12)
    lat, bw, worst = [], [], []
    for b in sorted(rows):
        m, o = rows[b].get("m2n"), rows[b].get("NCCL")
        if not m or not o: continue
        r50, r99 = m["p50_us"] / o["p50_us"], m["p99_us"] / o["p99_us"]
        rmax, rbw = m["max_us"] / o["max_us"], m["gb_per_s"] / o["gb_per_s"]
        print(f"| {b} | {m['p50_us']:.2f} | {o['p50_us']:.2f} | {r50:.2f} | {m['p99_us']:.2f} | "
              f"{o['p99_us']:.2f} | {r99:.2f} | {m['max_us']:.1f} | {o['max_us']:.1f} | {rmax:.2f} | "
              f"{m['gb_per_s']:.1f} | {o['gb_per_s']:.1f} | {rbw:.2f} |")
        if b <= 256 * 1024: lat.append(max(r50, r99))
        if 4 << 20 <= b <= 16 << 20: bw.append(rbw)
        worst.append(rmax)
    ok = lambda c: "met" if c else "NOT met"
    if lat: print(f"\nTargets: p50 and p99 <= 0.5x NCCL 4-256 KB: worst {max(lat):.2f}x ({ok(max(lat) <= 0.5)}); ", end="")
    if bw: print(f"GB/s >= 1.0x 4-16 MB: worst {min(bw):.2f}x ({ok(min(bw) >= 1.0)}); ", end="")
    if worst: print(f"max <= 0.2x NCCL max: worst {max(worst):.2f}x ({ok(max(worst) <= 0.2)})")
    print()
PY
cat "$out/gpu-tables.md"
fi  # SKIP_SWEEPS

if [ "${MOE:-1}" != 0 ]; then
  BUILD_DIR="$build" OUT="$out/moe" examples/moe_pipeline/gpu-check.sh || status=1
  stamp "moe_pipeline"
fi
if [ "${OFFLOAD:-1}" != 0 ]; then
  BUILD_DIR="$build" OUT="$out/offload" examples/moe_pipeline/offload-gpu-check.sh || status=1
  stamp "expert offloading"
fi
stamp "done"
exit $status
