#!/bin/sh
# Entrypoint of the control-plane image: runs its arguments (the image's command is
# `moeserve run`), after joining the Ray cluster at MOESERVE_RAY_ADDRESS when one is given.
#
# A Ray driver that attaches to a cluster by its GCS address (host:6379) must run on a node
# of that cluster, and moeserve's streaming Serve handles do not work over Ray Client
# (ray://). So the container joins the cluster as a node that offers no CPUs or GPUs
# (nothing is scheduled on it) and moeserve attaches through it. RAY_JOIN_ARGS adds flags
# to `ray start` (e.g. --object-store-memory). The node leaves when the container stops.
set -eu

case "${MOESERVE_RAY_ADDRESS:-}" in
  "" | auto | *://*) ;;  # a local Ray, one already joined, or Ray Client: nothing to join
  *)
    # shellcheck disable=SC2086  # RAY_JOIN_ARGS holds several flags
    ray start --address="$MOESERVE_RAY_ADDRESS" --num-cpus=0 --num-gpus=0 \
      --disable-usage-stats ${RAY_JOIN_ARGS:-}
    ;;
esac

exec "$@"
