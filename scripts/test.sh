#!/usr/bin/env bash
# Installs the dependencies, builds m2n and runs the whole test suite: ctest, the install / consumer
# test (static and shared), a short micro-benchmark run and the Python package's tests. README's
# test command.
#   BUILD_DIR (default build), JOBS (default: cores), CTEST_ARGS (extra ctest flags)
#   M2N_SANITIZERS 0 (default: skip) | auto (when the compiler can) | 1 (CI: must run): the ASan+UBSan
#     and TSan builds and their test runs after the steps above (scripts/test-sanitizers.sh; about
#     12 more minutes on 2 cores; build-asan, build-tsan).
#   M2N_FUZZ 0 (default: skip) | 1 (CI): build the libFuzzer targets of fuzz/ with clang and run each
#     for FUZZ_SECONDS (default 25) from its seeds (scripts/test-fuzz.sh; about 3 minutes; build-fuzz).
#     Without it the seeds still replay through every target as ctest fuzz_replay_*.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
t0=$(date +%s)
stamp() { echo "[test.sh] $1: $(( $(date +%s) - t0 )) s since start"; }

scripts/install-deps.sh
stamp "dependencies"
# The sources match .clang-format (scripts/format.sh applies it).
scripts/format.sh --check
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DM2N_WERROR=ON
cmake --build "$build" -j "$jobs"
stamp "build"
# Tests start several processes each and time-bound themselves; run one at a time on small machines.
ctest --test-dir "$build" --output-on-failure --timeout 300 ${CTEST_ARGS:-}
stamp "tests"
# The installed package, static (this tree) and shared (a library-only tree): a consumer project
# built with find_package(m2n) and with pkg-config, run 2 x 2 (tests/install/run.sh).
tests/install/run.sh "$build"
cmake -S . -B "$build-shared" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DM2N_WERROR=ON -DBUILD_SHARED_LIBS=ON \
  -DM2N_BUILD_TESTS=OFF -DM2N_BUILD_PERFTEST=OFF -DM2N_BUILD_EXAMPLES=OFF -DM2N_BUILD_BENCHMARKS=OFF > /dev/null
cmake --build "$build-shared" -j "$jobs" --target m2n
tests/install/run.sh "$build-shared"
stamp "install / consumer tests"
# The micro-benchmarks, a short run for the log (docs/PERFORMANCE.md keeps a table).
"$build/benchmarks/m2n_microbench" --benchmark_min_time=0.05
stamp "micro-benchmarks"
# The Python package: pip install . into a virtual environment, then its pytest tests.
scripts/test-python.sh
stamp "python package and tests"
# The verbs tests skip on a host without an RDMA device; here they run for real, on Soft-RoCE in a VM.
scripts/test-verbs-vm.sh "$build"
stamp "verbs tests in the VM"
if [ "${M2N_FUZZ:-0}" = 1 ]; then
  # Its own build tree (FUZZ_DIR, default build-fuzz): BUILD_DIR names the g++ tree.
  JOBS="$jobs" scripts/test-fuzz.sh
  stamp "fuzzing"
fi
# The same suite again under ASan + UBSan and under TSan (two more build trees), when asked (CI does).
JOBS="$jobs" M2N_SANITIZERS="${M2N_SANITIZERS:-0}" scripts/test-sanitizers.sh
stamp "sanitizer builds and tests"
