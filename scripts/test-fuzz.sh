#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (one per parser of bytes from the network) with clang,
# AddressSanitizer and UndefinedBehaviorSanitizer, and runs each for a bounded time from its
# committed seeds (fuzz/corpus/<target>/). Any crash, sanitizer finding, broken invariant, leak,
# timeout or out-of-memory fails the run; the input that did it is saved under
# $BUILD_DIR/artifacts/ and printed. The committed seeds are not changed: each run fuzzes a copy.
# Prints how long each step and each target took.
#
#   scripts/test-fuzz.sh [TARGET]...     (default: every target; names as in fuzz/CMakeLists.txt)
#
#   FUZZ_SECONDS (default 25): fuzzing time per target. FUZZ_DIR (default build-fuzz; not BUILD_DIR,
#   which scripts/test.sh exports for the g++ tree), JOBS.
#   CC / CXX: a clang with libFuzzer (default clang / clang++; Debian: apt-get install clang).
#
# The seed corpora replay through the same entry points on every ctest run of every build
# (ctest -R fuzz_replay); this script is the part that searches for new inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FUZZ_DIR:-build-fuzz}
jobs=${JOBS:-$(nproc)}
seconds=${FUZZ_SECONDS:-25}
cc=${CC:-clang}
cxx=${CXX:-clang++}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(store_frame store_session store_hello config transport_wire)

t_all=$(date +%s)
if ! command -v "$cxx" >/dev/null; then
  echo "[test-fuzz] FAILED: no $cxx (libFuzzer needs clang: apt-get install clang)" >&2
  exit 1
fi

t=$(date +%s)
# CUDA off: nvcc would only add build time, and the fuzzed parsers do not touch the GPU.
cmake -S . -B "$build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DM2N_FUZZ=ON "-DM2N_SANITIZE=address;undefined" -DCMAKE_CXX_FLAGS=-fno-sanitize-recover=all \
  -DCMAKE_C_FLAGS=-fno-sanitize-recover=all -DM2N_WITH_CUDA=OFF -DM2N_WITH_MPI=OFF -DM2N_BUILD_TESTS=OFF \
  -DM2N_BUILD_PERFTEST=OFF >/dev/null
cmake --build "$build" -j "$jobs" --target "${targets[@]/%/_fuzz}"
echo "[test-fuzz] build: $(( $(date +%s) - t )) s"

export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:report_error_type=1"
mkdir -p "$build/artifacts"
failed=()
for target in "${targets[@]}"; do
  seeds=fuzz/corpus/$target
  [ -d "$seeds" ] || { echo "[test-fuzz] FAILED: no seed corpus $seeds" >&2; failed+=("$target"); continue; }
  work=$(mktemp -d)
  cp "$seeds"/* "$work"/
  t=$(date +%s)
  rc=0
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a parser that allocates what a
  # length field says, unchecked, shows up as out-of-memory.
  "$build/fuzz/${target}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$target-" "$work" >"$build/$target.log" 2>&1 || rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/$target.log" | grep -o '[0-9]*$' || echo '?')
  corpus=$(ls "$work" | wc -l)
  echo "[test-fuzz] $target: $(( $(date +%s) - t )) s, $runs inputs run, corpus $(ls "$seeds" | wc -l) -> $corpus (rc $rc)"
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$build/$target.log" >&2
    ls "$build/artifacts/$target-"* 2>/dev/null | sed 's/^/[test-fuzz] saved input: /' >&2 || true
    failed+=("$target")
  fi
  rm -rf "$work"
done
echo "[test-fuzz] total: $(( $(date +%s) - t_all )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "[test-fuzz] FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "[test-fuzz] passed: ${targets[*]}"
