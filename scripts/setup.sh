#!/usr/bin/env bash
# Create .venv and install amsmooth with its test/eval extras (CPU torch pinned for this environment).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "torch==${AMSMOOTH_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[test]"
echo "amsmooth installed in .venv ($(python -c 'import amsmooth; print(amsmooth.__version__)'))"
