#!/usr/bin/env bash
# moe_pipeline on a host with GPUs (issue 6, the GPU half): builds with CUDA, then
#   1. correctness: the tiny model on the cuda backend (bf16), 2 attention + 2 expert GPUs, checked
#      against the single-process reference (relative error bound 3e-2, compute/compute.cc);
#   2. Mixtral-8x7B shapes (seeded bf16 weights generated on the GPUs), 2 attention + 2 expert GPUs,
#      ping-pong m = 1 and m = 3: decode tokens/s, TBT, busy / idle of each side.
# Needs >= 4 GPUs (one process per GPU, self-started on this host). Metrics JSON in $OUT.
#
#   examples/moe_pipeline/gpu-check.sh            BUILD_DIR (default build-gpu), OUT, EXTRA (more flags)
#
# Not here yet: the NCCL collocated baseline (every GPU runs attention and its share of experts),
# so the disaggregated-vs-collocated target cannot be measured by this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build-gpu}
out=${OUT:-$build/moe-results}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
if [ "${gpus:-0}" -lt 4 ]; then
  echo "[moe gpu-check] needs 4 GPUs, nvidia-smi lists ${gpus:-0}" >&2
  exit 2
fi
step() {  # step NAME CMD...: runs CMD and says how long it took
  local name=$1 t=$(date +%s) rc=0
  shift
  echo "[moe gpu-check] $name: $*"
  "$@" || rc=$?
  echo "[moe gpu-check] $name: $(( $(date +%s) - t )) s (rc $rc)"
  return $rc
}
step configure cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DM2N_BUILD_TESTS=OFF >/dev/null
step build cmake --build "$build" --target moe_pipeline -j "$(nproc)"
bin=$build/examples/moe_pipeline/moe_pipeline
mkdir -p "$out"
rc=0
step "tiny, bf16 vs the reference" "$bin" --backend cuda -A 2 -E 2 -m 2 --input_len 64 --output_len 32 \
  --requests 16 --batch 8 --json "$out/tiny-check.json" ${EXTRA:-} || rc=1
for m in 1 3; do
  step "mixtral-8x7b shapes, m = $m" "$bin" --backend cuda --config mixtral-8x7b --no_check -A 2 -E 2 -m "$m" \
    --batch 96 --requests 192 --max_context 2048 --timeout_s 600 --json "$out/mixtral-m$m.json" ${EXTRA:-} || rc=1
done
if [ -f "$out/mixtral-m1.json" ] && [ -f "$out/mixtral-m3.json" ]; then
  python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
m1, m3 = (json.load(open(f"{d}/mixtral-m{m}.json")) for m in (1, 3))
r = m3["decode_tokens_per_s"] / max(m1["decode_tokens_per_s"], 1e-9)
print(f"[moe gpu-check] m=3 vs m=1 decode throughput: {r:.2f}x (target >= 1.9x); "
      f"idle m=3: attention {m3['attention_idle']:.1%}, experts {m3['expert_idle']:.1%} (target < 15%)")
PY
fi
exit $rc
