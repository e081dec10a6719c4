"""A real `moto_server` process on 127.0.0.1 for the AWS tests, and fault injection for what
moto does not simulate (capacity and quota refusals).

moto keeps state per process: `reset` empties it between tests. Refusals are injected with
botocore's `before-call` event, which answers a call with the error AWS would send instead
of sending it; the code under test sees a real `ClientError`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """Start `moto_server` on a free port; yield its URL; stop it (its own process only)."""
    port = free_port()
    env = {**os.environ, "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).close()


class _Refusal:
    status_code = 400


def refuse(
    client: Any,
    operation: str,
    code: str,
    message: str,
    when: Callable[[dict[str, Any]], bool] = lambda body: True,
) -> list[dict[str, Any]]:
    """Make `client` answer `operation` with AWS error `code` whenever `when(body)` holds for
    the serialized request (query-protocol parameters, e.g. `LaunchTemplate.LaunchTemplateName`).
    Returns the list the refused requests are recorded in."""
    refused: list[dict[str, Any]] = []

    def answer(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]] | None:
        body = params.get("body")
        body = body if isinstance(body, dict) else {}
        if not when(body):
            return None
        refused.append(body)
        return _Refusal(), {"Error": {"Code": code, "Message": message}}

    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"before-call.{service}.{operation}", answer)
    return refused


def failed_launch_activity(client: Any, instance_type: str, message: str) -> None:
    """Make `client` report a group of `instance_type` as AWS does when it cannot launch
    that shape: the group exists with no instances (moto launches them regardless; they are
    hidden here) and its latest scaling activity failed with `message`."""
    refused_groups: set[str] = set()

    def no_instances(parsed: dict[str, Any], **_: Any) -> None:
        for described in parsed.get("AutoScalingGroups", []):
            tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
            name = described["AutoScalingGroupName"]
            if tags.get("moeserve:instance-type") == instance_type:
                described["Instances"] = []
                refused_groups.add(name)
            else:
                refused_groups.discard(name)

    def answer(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]] | None:
        body = params.get("body")
        group = body.get("AutoScalingGroupName") if isinstance(body, dict) else None
        if group not in refused_groups:
            return None
        activity = {
            "ActivityId": "5f1e2c4a-0000-4000-8000-000000000001",
            "AutoScalingGroupName": group,
            "Description": "Launching a new EC2 instance.  Status Reason: " + message,
            "Cause": "an instance was started in response to a difference between desired "
            "and actual capacity, increasing the capacity from 0 to 1.",
            "StartTime": datetime.now(UTC),
            "StatusCode": "Failed",
            "StatusMessage": message,
            "Progress": 100,
        }
        ok = type("Ok", (), {"status_code": 200})()
        return ok, {"Activities": [activity]}

    client.meta.events.register("after-call.auto-scaling.DescribeAutoScalingGroups", no_instances)
    client.meta.events.register("before-call.auto-scaling.DescribeScalingActivities", answer)
