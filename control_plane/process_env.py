"""Process-wide settings a control-plane process applies before Ray Serve is imported."""

from __future__ import annotations

import os
import signal
import sys
import threading

from workers.serve.loopback import SINGLE_MACHINE_RAY

SAME_LOOP_ROUTING = "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"


def prefer_same_loop_routing() -> None:
    """Route Ray Serve handle calls on the caller's event loop (uvicorn's) instead of a
    router thread with its own loop: every query then skips two cross-thread hand-offs, and
    `bench/gateway_overhead.py` measured +20% requests/s on 2 cores. Ray reads the variable
    when `ray.serve` is first imported, so call this first thing in `main()`; an explicit
    setting in the environment wins."""
    os.environ.setdefault(SAME_LOOP_ROUTING, "0")


def reclaim_shutdown_signals() -> None:
    """Give SIGTERM and SIGINT back to the handlers Python had for them (uvicorn's, which
    drain and run the lifespan shutdown). Ray's core worker installs a failure-signal
    handler when `ray.init` connects, and that handler ends the process a moment after a
    SIGTERM: the signal every rollout, `docker stop` and systemd stop sends. Call it after
    Ray is initialized; only the main thread may set handlers (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for number in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(number)
        if callable(handler) or handler in (signal.SIG_DFL, signal.SIG_IGN):
            signal.signal(number, handler)


def keep_local_ray_on_loopback() -> None:
    """Make the Ray this process is about to start listen on loopback only: without it, Ray
    2.60 on Linux binds its GCS, raylet and worker gRPC servers to every interface and its
    metrics exporters answer anyone, whatever node address it is given (it rewrites
    127.0.0.1 to the network address). The setting reaches the processes Ray starts through
    the environment (Serve replicas apply it to their own server, workers/serve/loopback.py).
    Call it before anything imports `ray`; an explicit setting in the environment wins."""
    if "ray" in sys.modules:
        raise RuntimeError(f"{SINGLE_MACHINE_RAY} must be set before ray is imported")
    os.environ.setdefault(SINGLE_MACHINE_RAY, "0")
