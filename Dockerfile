# syntax=docker/dockerfile:1.7
# User-code image for batchinfer_assets: serves the code location over gRPC to a Dagster
# webserver/daemon (or runs as the run worker image).
#   docker build -t batchinfer-assets .                                  # CPU torch
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t batchinfer-assets:cuda .
FROM python:3.11-slim-bookworm AS base

ARG TORCH_VERSION=2.13.0
# The CPU wheel index keeps the image small; point it at a CUDA index for GPU nodes.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BATCHINFER_HOME=/var/lib/batchinfer \
    DAGSTER_HOME=/opt/dagster/home

RUN groupadd --system --gid 10001 dagster \
 && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster --create-home dagster \
 && mkdir -p "$BATCHINFER_HOME" "$DAGSTER_HOME" \
 && chown -R dagster:dagster "$BATCHINFER_HOME" "$DAGSTER_HOME"

WORKDIR /opt/dagster/app

# Dependencies before source: editing code does not re-run the heavy torch/mlflow layers.
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
RUN mkdir -p batchinfer_assets && touch batchinfer_assets/__init__.py \
 && pip install . \
 && pip uninstall -y batchinfer_assets

COPY batchinfer_assets ./batchinfer_assets
COPY workspace.yaml dagster.yaml ./
RUN pip install --no-deps . && cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"

USER dagster
EXPOSE 4000

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]

CMD ["dagster", "api", "grpc", "-m", "batchinfer_assets.definitions", "-h", "0.0.0.0", "-p", "4000"]
