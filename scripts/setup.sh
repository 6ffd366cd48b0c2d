#!/usr/bin/env bash
# Create .venv with everything the demo and the tests need, at the versions in constraints.txt.
# torch is pinned to 2.13.0, the CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
echo "ready: .venv (python $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'))"
