#!/usr/bin/env bash
# m2n_plan against real moe_pipeline runs on this machine (docs/PERFORMANCE.md, "Deployment planner
# (m2n_plan) against real runs"). In one sitting:
#   1. the CPU backend's compute profile of configs/cpu-small.json (moe_pipeline --profile, 1 thread);
#   2. m2n's 1 x 1 curve (m2n_perf --json, the transport the pipeline picks);
#   3. for m in 1..4 and batch in BATCHES: the planner's prediction of the run (m2n_plan --plan ...
#      --fixed_lengths: iteration by iteration, from the two measured curves) and the run itself
#      (1 attention + 1 expert process, 1 thread each, one wave of fixed-length requests);
#   4. the table: predicted against measured decode tokens/s and TBT p50.
# `uptime` is printed beside each step: other jobs on the machine disturb the timings.
#   tools/plan/validate-cpu.sh [BUILD_DIR (build)] [OUT (BUILD_DIR/plan-validation)]
#   env: BATCHES (default "8 16 32"), MS (default "1 2 3 4"), IN / OUT_LEN (default 32 / 64)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
out=${2:-$build/plan-validation}
batches=${BATCHES:-"8 16 32"}
ms=${MS:-"1 2 3 4"}
in=${IN:-32}
out_len=${OUT_LEN:-64}
bin=$build/examples/moe_pipeline/moe_pipeline
perf=$build/perftest/m2n_perf
mkdir -p "$out"
rm -f "$out"/*.run.json "$out"/*.pred.json
echo "[validate] $(date -u +%H:%M:%S) uptime: $(uptime)"
"$bin" --config cpu-small --profile "$out/profile.json" --max_tokens 256 --max_context 256 --threads 1 --quiet
echo "[validate] profile written; uptime: $(uptime)"
"$perf" -M 1 -N 1 -b 1K -e 1M -n 300 -w 30 --json "$out/m2n-1x1.json" > "$out/m2n_perf.log" 2>&1
echo "[validate] m2n_perf 1x1 written; uptime: $(uptime)"
for m in $ms; do
  for b in $batches; do
    tag="m$m-b$b"
    python3 tools/plan/m2n_plan --model cpu-small --cluster tools/plan/clusters/dev-cpu.json \
      --profile "cpu-core=$out/profile.json" --comm_curve "$out/m2n-1x1.json" --comm staged \
      --lengths "$in/$out_len" --plan "a=cpu-core,A=1,E=1,m=$m,batch=$b" \
      --fixed_lengths "$in,$out_len,$b,256" --json "$out/$tag.pred.json" | tail -n 1
    "$bin" --config cpu-small -A 1 -E 1 -m "$m" --batch "$b" --requests "$b" --input_len "$in" \
      --output_len "$out_len" --max_tokens 256 --threads 1 --no_check --quiet --json "$out/$tag.run.json" \
      | grep -E "^(decode|TBT|T_a)"
    echo "[validate] $tag done; uptime: $(uptime)"
  done
done
(cd tools/plan && python3 -m planner.validate cpu "$OLDPWD/$out") | tee "$out/table.md"
