# syntax=docker/dockerfile:1
# A moeserve Ray node (head or GPU worker): Ray with CUDA, CUDA torch, and this package,
# whose `workers` code the Ray Serve replicas run. KubeRay starts it with its own
# `ray start` command; by hand: `docker run --gpus all IMAGE --address=HEAD:6379`.
#
#   docker build -f deploy/docker/worker.Dockerfile -t moeserve/worker:0.1.0 .
#
# Built from the repository root. Nothing is downloaded at run time: checkpoints come from
# mounted volumes (config.model_roots), never from a hub.

ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY billing ./billing
COPY control_plane ./control_plane
COPY deploy ./deploy
COPY persistence ./persistence
COPY workers ./workers
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${RAY_IMAGE}
# Must equal the base image's Ray and the control-plane image's.
ARG RAY_VERSION=2.60.0
# PyPI's Linux build of torch carries its CUDA libraries (the node needs only the NVIDIA
# driver); another CUDA build: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
# The base image's user is `ray` (uid 1000), not root; pip installs into its environment.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "ray[serve]==${RAY_VERSION}" /wheels/*.whl \
    && python -c "import ray, workers.serve.app; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"
USER 1000:100
ENTRYPOINT ["ray", "start", "--block"]
