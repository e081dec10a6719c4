"""Zero-downtime rollout: while 8 clients stream continuously, `update_config` moves the
endpoint from model version 1 to version 2 (a new Ray Serve app); no request fails, and
streams are served by version 2 afterwards. Replicas run the instant engine with a token
delay, so each stream lasts a while and many are in flight across the switch."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.control_plane.conftest import LiveServer
from tests.control_plane.query_fixtures import (
    create_endpoint,
    instant_ray_server,
    openai_client,
    usage_rows,
    wait_ready,
)
from tests.control_plane.test_sdk_and_mlflow import small_dbrx_checkpoint

NAME = f"rollout-{uuid.uuid4().hex[:6]}"
MODEL = "rollout-chat"
CLIENTS = 8


def _entity(version: str) -> dict[str, Any]:
    return {
        "entity_name": MODEL,
        "entity_version": version,
        "workload_size": "Small",
        "environment_vars": {"MOESERVE_INSTANT_TOKEN_DELAY_S": "0.05"},
    }


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("rollout")
    with instant_ray_server(root) as live, live.client() as http:
        for version in ("1", "2"):
            source = small_dbrx_checkpoint(root / "models" / f"v{version}", seed=int(version))
            registered = http.post(
                "/api/2.0/models", json={"name": MODEL, "version": version, "source": str(source)}
            )
            assert registered.status_code == 200, registered.text
        create_endpoint(http, NAME, [_entity("1")])
        yield live


def test_update_config_under_streaming_load_drops_nothing(server: LiveServer) -> None:
    stop = threading.Event()
    served: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def stream_forever() -> None:
        client = openai_client(server)
        while not stop.is_set():
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=NAME,
                    messages=[{"role": "user", "content": "keep talking"}],
                    max_tokens=4,
                    stream=True,
                )
                chunks = list(raw.parse())
                assert chunks[-1].choices[0].finish_reason == "length", chunks[-1]
                with lock:
                    served.append(raw.headers["served-model-name"])
            except Exception as exc:  # any failure fails the test
                with lock:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=stream_forever) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        with server.client() as http:
            update = http.put(
                f"/api/2.0/serving-endpoints/{NAME}/config",
                json={"served_entities": [_entity("2")]},
            )
            assert update.status_code == 200, update.text
            wait_ready(http, NAME, version=2)
        moved_at = len(served)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and served[moved_at:].count(f"{MODEL}-2") < 3 * CLIENTS:
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    print(f"rollout: served by {Counter(served)}; failures {len(failures)}")
    assert failures == []
    assert served.count(f"{MODEL}-1") > CLIENTS and served.count(f"{MODEL}-2") >= 3 * CLIENTS
    assert served[-CLIENTS:] == [f"{MODEL}-2"] * CLIENTS  # all traffic moved
    rows = usage_rows(server, NAME)
    assert len(rows) == len(served) and all(r["status_code"] == 200 for r in rows)
