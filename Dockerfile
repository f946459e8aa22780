# medssl image that runs what the README's two commands run: the demo and the test suite.
#   docker build -t medssl .
#   docker run --rm medssl bash pipelines/demo.sh        # the demo (outputs under /home/medssl/medssl/demo-output)
#   docker run --rm medssl bash tests/run.sh             # checks + the test suite
#   docker run --rm medssl medssl --help
# With --build-arg MEDSSL_EXTRAS=test,notebooks the image also has JupyterLab: after the demo,
#   docker run --rm -p 8888:8888 medssl bash -c "bash pipelines/demo.sh && bash pipelines/notebooks.sh --no-browser --ip 0.0.0.0"
# It installs with pipelines/setup.sh, the script both README commands call, so the image and a clone
# cannot install differently (tests/test_dockerfile.py keeps it so). CPU torch by default; for CUDA pass a
# PyTorch wheel index, e.g. --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128, and run with
# --gpus all. OpenSlide comes from the openslide-bin wheel, so no system packages are needed.
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=""
ARG MEDSSL_EXTRAS="test"

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MEDSSL_VENV=/home/medssl/venv \
    PATH=/home/medssl/venv/bin:$PATH

RUN useradd --create-home --uid 1000 medssl
USER 1000:1000
WORKDIR /home/medssl/medssl

COPY --chown=medssl:medssl pyproject.toml README.md ./
COPY --chown=medssl:medssl medssl ./medssl
COPY --chown=medssl:medssl pipelines ./pipelines
# the environment, exactly as `bash pipelines/demo.sh` and `bash tests/run.sh` make it; then pyright
# fetches its checker once, at build time (the tests' type check runs offline afterwards)
RUN MEDSSL_TORCH="$TORCH_SPEC" MEDSSL_TORCH_INDEX="$TORCH_INDEX" MEDSSL_EXTRAS="$MEDSSL_EXTRAS" bash pipelines/setup.sh \
    && pyright --version

COPY --chown=medssl:medssl configs ./configs
COPY --chown=medssl:medssl tests ./tests
COPY --chown=medssl:medssl benchmarks ./benchmarks
COPY --chown=medssl:medssl docs ./docs
COPY --chown=medssl:medssl notebooks ./notebooks
COPY --chown=medssl:medssl Dockerfile mkdocs.yml ./

CMD ["medssl", "--help"]
