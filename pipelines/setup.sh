#!/usr/bin/env bash
# Create the project's virtual environment (or reuse it) and install medssl with its test extras.
# Idempotent and quick when nothing changed. Environment:
#   MEDSSL_VENV   where the venv lives           (default: <repo>/.venv)
#   PYTHON        interpreter that makes it      (default: python3)
#   MEDSSL_TORCH  pip requirement for torch      (default: torch==2.13.0; any CUDA/CPU build works)
#   MEDSSL_TORCH_INDEX  a PyTorch wheel index for it (e.g. a CUDA one; default: pip's own index)
#   MEDSSL_EXTRAS which extras of pyproject.toml   (default: test; e.g. test,notebooks for JupyterLab too)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MEDSSL_VENV:-$repo/.venv}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
stamp="$venv/.medssl-installed"
extras=${MEDSSL_EXTRAS:-test}
want=$( (cat "$repo/pyproject.toml"; echo "$extras") | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "medssl: installing into $venv (first run takes a minute or two)" >&2
  "$py" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" >&2 || true
  if ! "$py" -c "import torch" 2>/dev/null; then
    index=()
    if [ -n "${MEDSSL_TORCH_INDEX:-}" ]; then index=(--index-url "$MEDSSL_TORCH_INDEX"); fi
    "$py" -m pip install -q "${index[@]}" "${MEDSSL_TORCH:-torch==2.13.0}" 2>&1 | grep -v "is ignored" >&2 || true
  fi
  "$py" -m pip install -q -e "$repo[$extras]" 2>&1 | grep -v "is ignored" >&2 || true
  "$py" -c "import medssl, openslide, zarr" || { echo "medssl: installation failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
echo "$venv"
