#!/usr/bin/env bash
# Create an isolated environment for lotsim and install it (idempotent).
#   scripts/setup.sh [EXTRAS]      e.g. scripts/setup.sh dev
# Installs the CPU torch wheel first when no torch is present: an unpinned `pip install torch`
# pulls several GB of CUDA packages. Override with TORCH_SPEC (e.g. a CUDA build) if you need one.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${1:-}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $TORCH_SPEC (CPU wheel)" >&2
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
stamp="$VENV/.lotsim-installed-${EXTRAS:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  spec="."
  [ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
  echo "setup: installing lotsim $spec" >&2
  "$PY" -m pip install -q -e "$spec"
  touch "$stamp"
fi
