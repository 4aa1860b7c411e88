#!/usr/bin/env bash
# Applies .clang-format to the C++ / CUDA sources git tracks (scripts/format.sh), or checks that they
# are formatted and lists the files that are not (scripts/format.sh --check; exit 1 if any).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-apply}
mapfile -t files < <(git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | grep -v '^fuzz/corpus/')
if [ "$mode" = --check ]; then
  bad=()
  for f in "${files[@]}"; do
    clang-format --style=file --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
  done
  if [ ${#bad[@]} -gt 0 ]; then
    echo "format: ${#bad[@]} file(s) differ from .clang-format (run scripts/format.sh):"
    printf '  %s\n' "${bad[@]}"
    exit 1
  fi
  echo "format: ${#files[@]} files match .clang-format"
else
  clang-format --style=file -i "${files[@]}"
fi
