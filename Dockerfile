# syntax=docker/dockerfile:1
# Training image: every stage of the pipeline (`t2s stage run <step>`), on CUDA, as a non-root user.
#
#   docker build -t text2sql-rlhf/train:0.1.0 .
#
# Build args pick the CUDA base and the matching PyTorch wheel index (cu128 wheels need a driver
# that supports CUDA 12.8). No secret is read or stored at build time: S3 keys reach the pods from
# a Kubernetes Secret at run time.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# ---- base: the CUDA runtime plus Python 3.11 (shared by the build and the final stage) -------------
FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Versions come from the pinned base image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# ---- build: a virtual environment with CUDA torch and the project ---------------------------------
FROM base AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, from the CUDA wheel index, in a layer of its own (it changes far less often than the
# project): the project's `torch>=...` requirement is then already met and pip keeps the CUDA wheel.
RUN python3.11 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY text2sql_core ./text2sql_core
RUN pip install . \
    && python -c "import torch, text2sql_core; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---- final: the runtime image ---------------------------------------------------------------------
FROM base
LABEL org.opencontainers.image.title="text2sql-rlhf training" \
      org.opencontainers.image.description="Stages of the text2sql-rlhf pipeline (prepare, SFT, RM, PPO, predict, evaluate)" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 10001: the chart's podSecurityContext runs as this user with runAsNonRoot.
RUN groupadd --system --gid 10001 t2s \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/t2s --create-home --shell /usr/sbin/nologin t2s
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/t2s \
    T2S_LOG_FORMAT=json
WORKDIR /work
RUN chown t2s:t2s /work
USER 10001:10001
ENTRYPOINT ["t2s"]
CMD ["--help"]
