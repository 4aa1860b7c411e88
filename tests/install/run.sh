#!/usr/bin/env bash
# The install / consumer test: installs a configured m2n build tree into a temporary prefix, builds
# the consumer project of this folder against it twice (find_package(m2n) and pkg-config), and runs
# each build as a 2 x 2 job on this host (ranks from M2N_* variables, UCX_TLS=shm,self unless set).
#   tests/install/run.sh BUILD_DIR      e.g. build (static libm2n.a) or a -DBUILD_SHARED_LIBS=ON tree
# Exit status 0 only when both builds link and every rank checked every byte.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: tests/install/run.sh BUILD_DIR}" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/m2n-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

cmake --build "$build" --target m2n
cmake --install "$build" --prefix "$prefix" > "$work/install.log"
for f in include/m2n/m2n.h lib/cmake/m2n/m2nConfig.cmake lib/cmake/m2n/m2nConfigVersion.cmake \
         lib/cmake/m2n/m2nTargets.cmake lib/pkgconfig/m2n.pc; do
  [ -f "$prefix/$f" ] || { echo "install test: $f was not installed"; exit 1; }
done
ls "$prefix"/lib/libm2n.* > /dev/null

# 1. CMake: find_package(m2n) from the prefix only.
cmake -S "$here" -B "$work/cmake-build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" > "$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/cmake-build" > "$work/build.log" || { cat "$work/build.log"; exit 1; }

# 2. pkg-config: the flags m2n.pc gives, nothing else. No --static: m2n.pc of a static libm2n.a
# names what the archive needs in Requires / Libs already, and --static would add the private
# dependencies of UCX and hwloc themselves (libudev ...), which only their own static builds need.
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
flags=$(pkg-config --cflags --libs m2n)
mkdir -p "$work/pc-build"
# shellcheck disable=SC2086  # the flags are words
c++ -std=c++20 -O1 "$here/consumer.cc" -o "$work/pc-build/consumer" $flags -Wl,-rpath,"$prefix/lib"

# A shared libm2n.so keeps the transports' libraries to itself: the consumer links libm2n alone.
if [ -f "$prefix/lib/libm2n.so" ]; then
  for binary in "$work/cmake-build/consumer" "$work/pc-build/consumer"; do
    if readelf -d "$binary" | grep -E 'NEEDED.*(ucp|ucs|uct|ibverbs|hwloc|cudart)'; then
      echo "install test: $binary links a transport's library itself; libm2n.so should hide them"
      exit 1
    fi
  done
fi

# Runs BINARY as ranks 0..3 of a 2 x 2 job on a free port; fails when any rank fails or hangs.
run_2x2() {
  local binary=$1 port pids=() rc=0
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  for rank in 0 1 2 3; do
    M2N_RANK=$rank M2N_WORLD_SIZE=4 M2N_MASTER_ADDR=127.0.0.1 M2N_MASTER_PORT=$port \
      M2N_TRANSPORT=ucx UCX_TLS="${UCX_TLS:-shm,self}" timeout 60 "$binary" & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}
echo "install test: $(ls "$prefix"/lib/libm2n.*) -> find_package consumer"
run_2x2 "$work/cmake-build/consumer"
echo "install test: pkg-config consumer ($flags)"
run_2x2 "$work/pc-build/consumer"
echo "install test: PASS"
