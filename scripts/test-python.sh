#!/usr/bin/env bash
# Builds and installs the Python package m2n from this checkout into a virtual environment, then
# runs its pytest tests (python/tests). README's test command runs it through scripts/test.sh.
#   PYTHON (default python3), VENV (default build-python/venv)
# pip fetches the build requirements (scikit-build-core, nanobind) and numpy / pytest from PyPI,
# within the bounds of pyproject.toml. The CMake tree in build-python/ is reused between runs.
# torch is not installed here: its tests skip with the reason unless the environment has it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VENV:-build-python/venv}
t0=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade "pip>=23"
"$venv/bin/python" -m pip install -q ".[test]"
echo "[test-python.sh] pip install .: $(( $(date +%s) - t0 )) s"
# From the repository root `m2n` is not importable from the source tree (it lives in python/m2n),
# so the tests import the installed package, as a user would.
"$venv/bin/python" -c "import m2n; print('m2n', m2n.__version__, 'transports', m2n.available_transports())"
"$venv/bin/python" -m pytest -p no:cacheprovider -q -rs python/tests
