#!/bin/sh
# ctest plan/profile_roundtrip: moe_pipeline --profile writes the tiny model's CPU profile, m2n_plan
# reads it back (measured figures for the profiled type, the others scaled by its efficiency) and
# answers with a plan. MOE_PIPELINE, PYTHON and OUT come from tools/plan/CMakeLists.txt.
set -eu
profile="$OUT/tiny-cpu-profile.json"
"$MOE_PIPELINE" --config tiny --profile "$profile" --max_tokens 16 --max_context 256 --threads 1 --quiet
out=$("$PYTHON" ./m2n_plan --model tiny --cluster clusters/dev-cpu.json --profile "cpu-core=$profile" \
      --comm staged --lengths 32/32 --tbt_ms 50 --explain)
echo "$out"
echo "$out" | grep -q "measured ($profile"
echo "$out" | grep -q "run: moe_pipeline --config tiny -A 1 -E 1"
