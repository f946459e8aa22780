# medssl CPU image. For GPUs, build with a CUDA torch: --build-arg TORCH_SPEC="torch==2.13.0" and
# --build-arg TORCH_INDEX=<your PyTorch wheel index>. OpenSlide comes from the openslide-bin wheel.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=""
WORKDIR /opt/medssl
RUN if [ -n "$TORCH_INDEX" ]; then pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"; \
    else pip install "$TORCH_SPEC"; fi
COPY pyproject.toml README.md ./
COPY medssl ./medssl
RUN pip install ".[h5,dicom]"
COPY pipelines ./pipelines
COPY configs ./configs
WORKDIR /work
ENTRYPOINT ["medssl"]
CMD ["--help"]
