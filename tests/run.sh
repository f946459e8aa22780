#!/usr/bin/env bash
# Install (if needed), check the code (layer contracts, lint, format, types), then run the test suite.
# Extra arguments go to pytest. MEDSSL_CHECKS=0 skips the checks (for a quick local re-run of one test).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$repo/pipelines/setup.sh")
cd "$repo"
if [ "${MEDSSL_CHECKS:-1}" != "0" ]; then
  echo "checks: layer contracts (lint-imports), ruff, pyright, hadolint, the documentation site (mkdocs --strict)" >&2
  "$venv/bin/lint-imports" --no-cache
  "$venv/bin/ruff" check medssl tests pipelines benchmarks docs
  "$venv/bin/ruff" format --check medssl tests pipelines benchmarks docs
  "$venv/bin/pyright" --pythonpath "$venv/bin/python"
  "$venv/bin/hadolint" Dockerfile
  # not --quiet: it hides the warnings that --strict turns into a failure, so the build would pass
  site=$(mktemp -d)
  if ! built=$(NO_MKDOCS_2_WARNING=1 "$venv/bin/mkdocs" build --strict --site-dir "$site" 2>&1); then
    echo "$built" | grep -v "^INFO" >&2
    exit 1
  fi
  rm -rf "$site"
fi
set +e
"$venv/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5) for: $*" >&2
  exit 0
fi
exit "$rc"
