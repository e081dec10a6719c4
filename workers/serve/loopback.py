"""A replica's own listening socket kept on loopback when Ray runs on one machine.

Ray Serve 2.60 starts, in every replica, a gRPC server for calls between deployments and
binds it to `[::]:0` — every interface — whatever the node's address. When the Ray that
hosts the replica is a single-machine one (`SINGLE_MACHINE_RAY=0` in its environment, which
`moeserve run` sets for the local Ray it starts), nothing outside the machine has any
business calling it, so the replica binds it to loopback instead. Light to import: Ray is
loaded only when a replica applies it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# Ray's switch between its single-machine mode (the node address is the loopback one, and
# Ray's gRPC servers, agents and exporters bind to it; the default on macOS and Windows)
# and its cluster mode (the network address; the default on Linux). Read when `ray` is
# first imported, and inherited by every process Ray starts.
SINGLE_MACHINE_RAY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_WILDCARD = "[::]:"
_LOOPBACK = "127.0.0.1:"
_applied = False


def on_single_machine() -> bool:
    return os.environ.get(SINGLE_MACHINE_RAY) == "0"


def confine_replica_grpc_server() -> None:
    """In a replica on a single-machine Ray, make Serve bind its inter-deployment gRPC
    server to loopback. Call it in the deployment's constructor: Serve starts that server
    right after the constructor returns. Elsewhere (a cluster) it changes nothing."""
    global _applied
    if _applied or not on_single_machine():
        return
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:  # a Ray whose replica binds differently: say so, serve anyway
        log.warning("cannot keep this Ray Serve version's replica gRPC server on loopback")
        return

    def bind_on_loopback(server: Any, address: str) -> int:
        if address.startswith(_WILDCARD):
            address = _LOOPBACK + address.removeprefix(_WILDCARD)
        port: int = bind(server, address)
        return port

    replica.add_port_to_grpc_server = bind_on_loopback
    _applied = True
