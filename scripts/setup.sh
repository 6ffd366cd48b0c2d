#!/usr/bin/env bash
# Create .venv with everything the demo and the tests need, at the versions in constraints.txt.
# torch is pinned to 2.13.0: PyPI's build, which brings its CUDA libraries (several GB) and runs on the CPU
# where there is no GPU. About 6 minutes on a busy 2-core machine with a warm pip cache; .venv is ~5 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
echo "ready: .venv (python $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'))"
