# syntax=docker/dockerfile:1
#
# Zeroth's server image. Two final targets share every stage but the Python environment:
#
#   docker build -t zeroth:cpu .                                    # CPU (default, last stage)
#   docker build -t zeroth:cpu-nomodel --build-arg BUILD_DEFAULT_MODEL=0 .   # models mounted
#   docker build -t zeroth:gpu --target gpu .                       # CUDA torch
#
# Why one file with a `gpu` target rather than a Dockerfile.gpu on an nvidia/cuda base: torch's
# Linux wheels on PyPI carry their own CUDA runtime, cuBLAS and cuDNN as nvidia-* wheels, so an
# nvidia/cuda base would add a second, unused copy of CUDA (gigabytes); the only piece from the
# host is the driver, which the NVIDIA Container Toolkit mounts in (`docker run --gpus all`).
# Sharing the stages also keeps the two images' code, user, paths and probes identical.
#
# BUILD_DEFAULT_MODEL=1 (the default) builds the default model, models/wordllama, into the
# image from the wordllama wheel on PyPI, as `make model` does, so `docker run` serves
# text-embedding-3-small at once. With 0, /app/models is empty: mount checkpoints there and, for other aliases, a
# models list at $MODELS_LIST (paths in it resolve against the list's folder).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The runtime requirements with CPU-only torch. torch comes first from PyTorch's CPU index, at
# requirements.txt's own pin plus the +cpu label (PyPI's Linux torch pulls ~3 GB of CUDA
# wheels); `torch==X` in requirements.txt is then already satisfied by X+cpu.
FROM base AS deps-cpu
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && TORCH_VERSION="$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' /tmp/requirements.txt)" \
    && test -n "$TORCH_VERSION" \
    && pip install --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple "torch==${TORCH_VERSION}+cpu" \
    && pip install -r /tmp/requirements.txt

# The same requirements with PyPI's torch, which is the CUDA build on Linux x86-64.
FROM base AS deps-gpu
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && pip install -r /tmp/requirements.txt

# The tiktoken encodings (the default models list reads cl100k_base ids offline) and, unless
# BUILD_DEFAULT_MODEL=0, the default model: the commands of the Makefile's `model` target.
# The models_list.yaml shipped below already maps both OpenAI names to models/wordllama. The
# import reads safetensors on the CPU (seconds), for either target.
FROM deps-cpu AS model
ARG BUILD_DEFAULT_MODEL=1
WORKDIR /build
COPY zeroth/ zeroth/
COPY extract/ extract/
COPY configs/ configs/
RUN mkdir -p models \
    && python -m extract.fetch tiktoken \
    && if [ "$BUILD_DEFAULT_MODEL" = "1" ]; then \
        python -m extract.fetch wordllama \
        && python -m extract .cache/weights/wordllama --out models/wordllama; \
    fi

# Code, models list, tiktoken files and models; no Python environment yet.
FROM base AS app
WORKDIR /app
COPY server.py gunicorn.conf.py models_list.yaml ./
COPY zeroth/ zeroth/
COPY extract/ extract/
COPY configs/ configs/
COPY --from=model /build/.cache/tiktoken/ .cache/tiktoken/
COPY --from=model /build/models/ models/
# Bytecode now: at run time /app is read-only (root's files, and a read-only root filesystem).
RUN python -m compileall -q server.py gunicorn.conf.py zeroth extract

# Settings shared by both final targets (gunicorn.conf.py and zeroth/ read these).
# GUNICORN_CMD_ARGS: gunicorn's worker heartbeat files go to /dev/shm (a tmpfs in Docker and
# Kubernetes alike) rather than /tmp, which may be disk-backed or read-only.
FROM base AS runtime
# /app holds the packages as copied (gunicorn.conf.py imports zeroth.settings before gunicorn
# puts the app's folder on the path).
# DL3064 flags TIKTOKEN_CACHE_DIR for the "TOKEN" in its name: a folder path, not a secret.
# hadolint ignore=DL3064
ENV PYTHONPATH=/app \
    MODELS_LIST=/app/models_list.yaml \
    TIKTOKEN_CACHE_DIR=/app/.cache/tiktoken \
    PROMETHEUS_MULTIPROC_DIR=/run/zeroth/metrics \
    ZEROTH_BIND=0.0.0.0:8000 \
    ZEROTH_WORKERS=2 \
    GUNICORN_CMD_ARGS="--worker-tmp-dir /dev/shm"
# A numeric USER (below), so Kubernetes' runAsNonRoot can check it. The metrics folder must
# exist and be the server's when the root filesystem is writable (plain `docker run`);
# read-only deployments mount a tmpfs/emptyDir over it.
RUN groupadd --system --gid 10001 zeroth \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin zeroth \
    && mkdir -p /run/zeroth/metrics \
    && chown 10001:10001 /run/zeroth/metrics
WORKDIR /app
EXPOSE 8000
# slim has no curl; urlopen raises (exit 1) on a refused connection or any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('ZEROTH_BIND', ':8000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "server:app"]

# GPU: give the models `device: cuda` (or auto) in the models list, run with --gpus all.
# The preloaded master never initialises CUDA; each worker moves its table to the GPU on first
# use (zeroth/pooling.py), as tests/test_api_backends.py checks under gunicorn on a GPU.
FROM runtime AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=deps-gpu /opt/venv /opt/venv
COPY --from=app /app /app
USER 10001:10001

# CPU (default target: the last stage).
FROM runtime AS cpu
COPY --from=deps-cpu /opt/venv /opt/venv
COPY --from=app /app /app
USER 10001:10001
