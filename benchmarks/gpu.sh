#!/usr/bin/env bash
# Every pretraining config on one GPU for a fixed number of steps at realistic sizes (224² tiles and slices,
# 64×128×128 stacks, 96³ crops, MADELEINE's 65 × 5 × 2,048 × 512 features), with device views, bf16 and
# channels-last encoders: one table of samples/s, the step split (data wait / views / compute), loader stall
# and peak GPU memory, and JSON. Synthetic caches are built first, inside the time limit; everything must
# finish within 8 minutes (the driver starts no config after --budget seconds; `timeout` is the backstop,
# and the JSON holds every config finished before it).
#
#   bash benchmarks/gpu.sh                          # the whole run
#   bash benchmarks/gpu.sh --configs simclr_tiles   # any benchmarks/bench_gpu.py option
#   bash benchmarks/gpu.sh --toy                    # tiny sizes on the CPU (what tests/test_gpu_benchmark.py runs)
#
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then python="$here/../.venv/bin/python"; else python=python3; fi
fi
exec timeout --signal=INT --kill-after=20 "${LIMIT_S:-470}" "$python" "$here/bench_gpu.py" "$@"
