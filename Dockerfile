# syntax=docker/dockerfile:1.7
# User-code image for batchinfer_assets: serves the code location over gRPC and is the image of
# every run pod and step pod the K8sRunLauncher and k8s_job_executor start, and of the Ray nodes of
# deploy/kuberay/raycluster.yaml (PROJECT_EXTRAS carries the ray extra: driver and cluster run one Ray version).
#   docker build -t batchinfer-assets:cpu .                                   # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t batchinfer-assets:cu128 .  # CUDA 12.8 torch
#   add --build-arg GIT_COMMIT=$(git rev-parse HEAD) so each scored day records the image's commit
# TORCH_VARIANT is any wheel index under https://download.pytorch.org/whl/ (cpu, cu126, cu128, ...).
# A CUDA image also runs on CPU nodes: BATCHINFER_DEVICE=auto falls back to the CPU.
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TORCH_VERSION=${TORCH_VERSION} \
    TORCH_INDEX_URL=${TORCH_INDEX_URL} \
    PROJECT_EXTRAS=deploy,ray \
    BATCHINFER_HOME=/var/lib/batchinfer \
    DAGSTER_HOME=/opt/dagster/home

# A fixed numeric uid so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 dagster \
 && useradd --system --uid 10001 --gid 10001 --home-dir /opt/dagster --create-home dagster \
 && mkdir -p "$BATCHINFER_HOME" "$DAGSTER_HOME" \
 && chown -R 10001:10001 "$BATCHINFER_HOME" "$DAGSTER_HOME"

WORKDIR /opt/dagster/app

# Dependencies before source: editing code does not re-run the torch/mlflow layer.
COPY deploy/docker/install.sh /usr/local/bin/batchinfer-install
COPY pyproject.toml ./
RUN batchinfer-install deps

# The commit every scored day records (the image has no .git): docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD)
ARG GIT_COMMIT=unknown
ENV BATCHINFER_GIT_COMMIT=${GIT_COMMIT}

COPY batchinfer_assets ./batchinfer_assets
COPY README.md workspace.yaml dagster.yaml ./
RUN batchinfer-install app \
 && cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"

USER 10001:10001
EXPOSE 4000

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]

CMD ["dagster", "api", "grpc", "-m", "batchinfer_assets.definitions", "-h", "0.0.0.0", "-p", "4000"]
