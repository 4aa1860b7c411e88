#!/usr/bin/env bash
# Installs what m2n builds and tests with, from Debian / Ubuntu packages. Idempotent.
#   required: a C++20 compiler, CMake >= 3.25, pkg-config
#   transports: UCX (libucx-dev), rdma-core (libibverbs-dev, librdmacm-dev)
#   topology: hwloc; tests and benchmarks: GoogleTest, Google Benchmark
#   baseline: Open MPI (m2n_perf --baseline mpi), perftest (m2n_perf --baseline perftest)
#   fuzzing (scripts/test-fuzz.sh): clang and its runtime libraries (libFuzzer, sanitizers)
#   verbs tests in a VM (scripts/test-verbs-vm.sh, Soft-RoCE): QEMU, busybox, kmod, cpio, xz and the
#     rdma-core userspace the guest borrows from the host (../shared/rxe/NOTES.md)
# CUDA and NCCL are optional and not installed here: the build detects them when present.
set -euo pipefail
packages=(
  build-essential cmake pkg-config
  libucx-dev ucx-utils
  libibverbs-dev librdmacm-dev ibverbs-providers
  libhwloc-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin
  clang libclang-rt-dev clang-format
  qemu-system-x86 busybox-static kmod cpio xz-utils
  rdma-core ibverbs-utils iproute2 perftest rdmacm-utils
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
