#!/usr/bin/env bash
# Runs the verbs test suite (every ctest test named verbs/...) inside a throw-away QEMU VM that has a
# real kernel verbs stack: Soft-RoCE (rdma_rxe) on device rxe0, the host's own /usr, and the build
# directory shared at the same path, so the host-built tests run there unchanged. No machine here
# has an RDMA NIC; this is how the verbs transport is tested for real. Prints how long it took.
#
#   scripts/test-verbs-vm.sh BUILD_DIR [CTEST_REGEX]      (default regex: ^verbs/)
#
#   M2N_VERBS_VM      auto (default): run when the runner and qemu are here, else say why not and
#                     succeed; 1: they must be here (CI); 0: skip.
#   M2N_RXE_RUNNER    the VM runner (default: ../shared/rxe/run-in-rxe-vm.sh next to this checkout);
#                     its header documents it. Its first run downloads the Debian kernel package
#                     (apt-get download, not installed) into /tmp/rxe-lab/cache.
# Packages: scripts/install-deps.sh installs qemu-system-x86 and what the guest needs.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: test-verbs-vm.sh BUILD_DIR [CTEST_REGEX]}
regex=${2:-^verbs/}
mode=${M2N_VERBS_VM:-auto}
runner=${M2N_RXE_RUNNER:-$(cd .. && pwd)/shared/rxe/run-in-rxe-vm.sh}

[ "$mode" = 0 ] && { echo "[test-verbs-vm] skipped: M2N_VERBS_VM=0"; exit 0; }
missing=""
[ -x "$runner" ] || missing="the VM runner $runner (set M2N_RXE_RUNNER)"
command -v qemu-system-x86_64 >/dev/null || missing="${missing:+$missing, }qemu-system-x86_64 (scripts/install-deps.sh)"
if [ -n "$missing" ]; then
  if [ "$mode" = 1 ]; then
    echo "[test-verbs-vm] FAILED: M2N_VERBS_VM=1 but missing: $missing" >&2
    exit 1
  fi
  echo "[test-verbs-vm] skipped: missing $missing"
  exit 0
fi

build=$(cd "$build" && pwd)
t0=$(date +%s)
# Inside the guest: one rank per process on 2 vCPUs, every wait bounded; the bootstrap store binds
# 127.0.0.1 (loopback is up in the guest), the QPs use rxe0's RoCE v2 GID of $RXE_ADDR.
set +e
"$runner" -t 900 -e GTEST_COLOR=no "$build" \
  "ctest --test-dir '$build' -R '$regex' --output-on-failure --timeout 300 --no-tests=error"
rc=$?
set -e
echo "[test-verbs-vm] verbs suite in the Soft-RoCE VM: exit $rc, $(( $(date +%s) - t0 )) s (boot included)"
exit $rc
