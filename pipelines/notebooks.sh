#!/usr/bin/env bash
# Open the notebooks on the demo's outputs: install the notebooks extra (JupyterLab, matplotlib, pandas) into the
# project's venv, then start JupyterLab in notebooks/. Run `bash pipelines/demo.sh` first (it writes demo-output/).
# MEDSSL_DEMO_OUTPUT points the notebooks at another output folder; extra arguments go to `jupyter lab`
# (e.g. --no-browser --ip 0.0.0.0 inside a container).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=$(cd "${MEDSSL_DEMO_OUTPUT:-$repo/demo-output}" 2>/dev/null && pwd) || {
  echo "medssl: no demo output at ${MEDSSL_DEMO_OUTPUT:-$repo/demo-output}; run: bash pipelines/demo.sh" >&2
  exit 1
}
venv=$(MEDSSL_EXTRAS=test,notebooks bash "$repo/pipelines/setup.sh")
MEDSSL_DEMO_OUTPUT="$demo" exec "$venv/bin/jupyter" lab --notebook-dir "$repo/notebooks" "$@"
