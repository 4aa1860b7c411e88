#!/usr/bin/env bash
# moe_pipeline on a host with 4 GPUs (issue 6, the GPU half), one process per GPU, self-started:
#   1. correctness: the tiny model on the cuda backend (bf16), disaggregated (2 attention + 2 expert
#      GPUs) and collocated (4 GPUs, NCCL), each checked against the single-process reference;
#   2. Mixtral-8x7B shapes (seeded bf16 weights generated on the GPUs), fixed lengths, for each global
#      batch in BATCHES: disaggregated 2 + 2 with ping-pong m = 1 and m = 3, and the collocated
#      baseline on 4 GPUs with the same global batch and the same requests per GPU;
#   3. a table (moe-table.md): decode tokens/s per GPU, time between tokens p50 / p99, idle of each
#      side (collocated: the time each process spends in the all-to-all), m = 3 vs m = 1, and
#      disaggregated vs collocated per-GPU throughput, each at its best batch whose median time
#      between tokens stays within the 150 ms limit.
# With fewer than 4 GPUs (one, say) it runs its single-GPU mode instead: every rank a process sharing
# the GPU(s) (CUDA IPC works between processes of one GPU), the device path's correctness only:
# moe_pipeline_test's CudaDevicePathMatchesTheReference (when built) and the tiny model disaggregated
# 2 + 2 at m = 1 and m = 3 (bf16 check; its timings are a smoke figure: processes sharing a GPU say
# nothing about NVLink or about ping-pong across GPUs). The collocated baseline needs a GPU per
# process (NCCL) and is skipped there.
# Called by scripts/gpu-check.sh (MOE=0 there skips it); can run alone after a build:
#   examples/moe_pipeline/gpu-check.sh     BUILD_DIR (default build-gpu), OUT (default $BUILD_DIR/moe-results),
#                                          BATCHES (global batch sizes, default "64 256 1024"),
#                                          INPUT_LEN / OUTPUT_LEN (default 64 / 32), RUN_TIMEOUT (s, default 120)
# Exit status: non-zero if a check failed or a run failed; every step still runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build-gpu}
out=${OUT:-$build/moe-results}
batches=${BATCHES:-"64 256 1024"}
input_len=${INPUT_LEN:-64}
output_len=${OUTPUT_LEN:-32}
run_timeout=${RUN_TIMEOUT:-120}
export NCCL_NVLS_ENABLE=0
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
if [ "${gpus:-0}" -lt 1 ]; then
  echo "[moe gpu-check] needs a GPU, nvidia-smi lists none" >&2
  exit 2
fi
step() {  # step NAME LOG CMD...: runs CMD bounded by RUN_TIMEOUT, its output in LOG; says how long it took
  local name=$1 log=$2 t=$(date +%s) rc=0
  shift 2
  echo "[moe gpu-check] $name: $*"
  timeout "$run_timeout" "$@" > "$log" 2>&1 || rc=$?
  grep -E "^(decode|TBT|attention side|expert side|each process|M2N per|T_a|check|  +)" "$log" | sed 's/^/    /'
  [ "$rc" -eq 0 ] || tail -n 5 "$log" | sed 's/^/    ! /'
  echo "[moe gpu-check] $name: $(( $(date +%s) - t )) s (rc $rc)"
  return $rc
}
if [ ! -x "$build/examples/moe_pipeline/moe_pipeline" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build "$build" --target moe_pipeline -j "$(nproc)" >/dev/null
fi
bin=$build/examples/moe_pipeline/moe_pipeline
mkdir -p "$out"
rc=0
fixed=(--input_len "$input_len" --output_len "$output_len" --quiet --timeout_s 300)
if [ "$gpus" -lt 4 ]; then  # the single-GPU mode (see the top)
  echo "[moe gpu-check] $gpus GPU(s): single-GPU mode (device path correctness; no Mixtral shapes, no collocated baseline)"
  test_bin=$build/examples/moe_pipeline/tests/moe_pipeline_test
  if [ -x "$test_bin" ]; then
    step "moe_pipeline_test, the device path" "$out/device-path-test.log" \
      "$test_bin" --gtest_filter='MoePipeline.CudaDevicePath*' || rc=1
    tail -n 3 "$out/device-path-test.log" | sed 's/^/    /'
  fi
  for m in 1 3; do
    step "tiny, disaggregated 2 + 2 on $gpus GPU(s), m = $m, bf16 vs the reference" "$out/tiny-disagg-m$m.log" \
      "$bin" --backend cuda -A 2 -E 2 -m "$m" --requests 16 --batch 8 "${fixed[@]}" --json "$out/tiny-disagg-m$m.json" || rc=1
  done
  exit $rc
fi
step "tiny, disaggregated 2 + 2, bf16 vs the reference" "$out/tiny-disagg.log" \
  "$bin" --backend cuda -A 2 -E 2 -m 2 --requests 16 --batch 8 "${fixed[@]}" --json "$out/tiny-disagg.json" || rc=1
step "tiny, collocated 4, bf16 vs the reference" "$out/tiny-colloc.log" \
  "$bin" --backend cuda --collocated 4 -m 2 --requests 8 --batch 4 "${fixed[@]}" --json "$out/tiny-colloc.json" || rc=1
for b in $batches; do
  per_attention=$(( b / 2 ))   # 2 attention GPUs
  per_gpu=$(( b / 4 ))         # 4 collocated GPUs
  max_tokens=$(( per_attention > 256 ? per_attention : 256 ))
  for m in 1 3; do
    step "mixtral shapes, global batch $b, disaggregated 2 + 2, m = $m" "$out/mix-b$b-m$m.log" \
      "$bin" --backend cuda --config mixtral-8x7b --no_check -A 2 -E 2 -m "$m" --batch "$per_attention" \
      --requests "$per_attention" --max_tokens "$max_tokens" "${fixed[@]}" --json "$out/mix-b$b-m$m.json" || rc=1
  done
  step "mixtral shapes, global batch $b, collocated 4" "$out/mix-b$b-col.log" \
    "$bin" --backend cuda --config mixtral-8x7b --no_check --collocated 4 -m 1 --batch "$per_gpu" \
    --requests "$per_gpu" --max_tokens "$max_tokens" "${fixed[@]}" --json "$out/mix-b$b-col.json" || rc=1
done
python3 - "$out" "$batches" <<'PY' | tee "$out/moe-table.md"
import json, os, sys
out, batches = sys.argv[1], [int(b) for b in sys.argv[2].split()]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
print("| global batch | run | decode tok/s per GPU | TBT p50 ms | TBT p99 ms | attention idle | expert idle | T_a / T_e ms | M2N ms/layer |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
best = {}
for b in batches:
    for tag, label in (("m1", "disaggregated 2+2, m=1"), ("m3", "disaggregated 2+2, m=3"), ("col", "collocated 4 (NCCL)")):
        j = load(f"mix-b{b}-{tag}.json")
        if j is None:
            print(f"| {b} | {label} | failed | | | | | | |")
            continue
        per_gpu = j["decode_tokens_per_s"] / 4
        idle_a = j.get("attention_idle", j.get("process_idle", float("nan")))
        idle_e = j.get("expert_idle", float("nan"))
        split = f"{j['t_a_ms']:.2f} / {j['t_e_ms']:.2f}" if tag != "col" else "-"
        idle_e = f"{idle_e:.1%}" if tag != "col" else "-"
        print(f"| {b} | {label} | {per_gpu:.1f} | {j['tbt_p50_ms']:.1f} | {j['tbt_p99_ms']:.1f} | {idle_a:.1%} | "
              f"{idle_e} | {split} | {j.get('m2n_ms_per_layer', float('nan')):.2f} |")
        if j["tbt_p50_ms"] <= 150:  # the 150 ms time-between-tokens limit, on the median
            key = "disagg" if tag != "col" else "col"
            best[key] = max(best.get(key, 0), per_gpu)
print()
for b in batches:
    m1, m3 = load(f"mix-b{b}-m1.json"), load(f"mix-b{b}-m3.json")
    if m1 and m3:
        print(f"- global batch {b}: m=3 vs m=1 decode throughput {m3['decode_tokens_per_s'] / m1['decode_tokens_per_s']:.2f}x (target >= 1.9x)")
if "disagg" in best and "col" in best:
    print(f"- per-GPU decode throughput at TBT p50 <= 150 ms (best of the batches): disaggregated {best['disagg']:.1f} vs collocated "
          f"{best['col']:.1f} tok/s = {best['disagg'] / best['col']:.2f}x (target >= 1.5x)")
PY
exit $rc
