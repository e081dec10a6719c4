"""A control-plane process whose replicas run the instant engine, for benchmarks and
multi-process checks (the serving path is real; the model is free).

    python -m bench.control_plane_process --port P --data-dir DIR --ray-address ADDR \
        [--database-url URL] [--redis-url URL] [--token TOKEN]

`start_control_plane(...)` launches it as a child process and waits until it answers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKEN = "dapi-bench-admin"


def serve(args: argparse.Namespace) -> None:
    from control_plane.process_env import prefer_same_loop_routing

    prefer_same_loop_routing()  # as `moeserve run` does
    import uvicorn
    from pydantic import SecretStr

    from control_plane import Settings, create_app
    from deploy.providers.local import LocalRayProvider
    from workers.testing.instant import instant_engine_factory

    settings = Settings(
        data_dir=Path(args.data_dir),
        database_url=args.database_url,
        redis_url=args.redis_url,
        port=args.port,
        admin_token=SecretStr(args.token),
        shared_endpoints=[],
        ray_address=args.ray_address,
    )
    provider = LocalRayProvider(address=args.ray_address, engine_factory=instant_engine_factory)
    app = create_app(settings, lambda _settings: provider)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api(
    base: str, path: str, method: str = "GET", body: Any = None, token: str = DEFAULT_TOKEN
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def start_control_plane(
    ray_address: str,
    data_dir: str,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    token: str = DEFAULT_TOKEN,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start one control-plane process; returns it and its base URL once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "bench.control_plane_process", "--port", str(port)]
    command += ["--data-dir", data_dir, "--ray-address", ray_address, "--token", token]
    if database_url:
        command += ["--database-url", database_url]
    if redis_url:
        command += ["--redis-url", redis_url]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: api(base, "/api/2.0/serving-endpoints", token=token), 90, "the control plane")
    except BaseException:
        process.kill()
        raise
    return process, base


def create_endpoint(
    base: str, name: str, token: str = DEFAULT_TOKEN, **extra: Any
) -> dict[str, Any]:
    """A one-entity dbrx-tiny endpoint (instant replicas), once READY."""
    entity = {"entity_name": "dbrx-tiny", "entity_version": "1", "workload_size": "Small"}
    body = {"name": name, "config": {"served_entities": [entity]}, **extra}
    api(base, "/api/2.0/serving-endpoints", "POST", body, token=token)

    def ready() -> dict[str, Any] | None:
        found: dict[str, Any] = api(base, f"/api/2.0/serving-endpoints/{name}", token=token)
        state = found["state"]
        done = state["ready"] == "READY" and state["config_update"] == "NOT_UPDATING"
        return found if done else None

    result: dict[str, Any] = wait(ready, 120, f"endpoint {name} to be READY")
    return result


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--ray-address", required=True)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    serve(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
