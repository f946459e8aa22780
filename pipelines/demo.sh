#!/usr/bin/env bash
# The main job on embedded demo data, from a fresh clone: install, make demo slides, tile them.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$repo/pipelines/setup.sh")
exec "$venv/bin/python" "$repo/pipelines/demo.py" "$@"
