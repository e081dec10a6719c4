# syntax=docker/dockerfile:1
# The moeserve control plane: `moeserve run` (management, query and billing APIs, the
# reconciler, metering), with CPU torch (prompts are tokenized and checkpoints inspected
# here; the model runs on the Ray workers) and the same Ray as the worker image.
#
#   docker build -f deploy/docker/control-plane.Dockerfile -t moeserve/control-plane:0.1.0 .
#
# Built from the repository root. Nothing is downloaded at run time.

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

FROM ${PYTHON_IMAGE}
# Must equal the worker image's Ray: a driver and its cluster run one Ray version.
ARG RAY_VERSION=2.60.0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    MOESERVE_HOST=0.0.0.0 \
    MOESERVE_DATA_DIR=/var/lib/moeserve
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 moeserve \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/moeserve moeserve \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/moeserve
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "ray[serve]==${RAY_VERSION}" /wheels/*.whl \
    && python -c "import ray, torch; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/moeserve-docker-entrypoint
USER 10001:10001
WORKDIR /home/moeserve
EXPOSE 8080
ENTRYPOINT ["tini", "--", "moeserve-docker-entrypoint"]
CMD ["moeserve", "run"]
