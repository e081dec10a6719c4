"""A reconcile holds no database lock across a provider call (issue 15). Two control planes
share one PostgreSQL database; while one is inside a deploy that blocks (as a cloud call
that takes minutes would), the management API answers within a second on either process,
and once the deploy returns the endpoint converges to the newest config: the reconcile
planned before the update stores nothing, and no API write made meanwhile is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import build_engine, session_factory, upgrade
from control_plane.db.models import Endpoint
from control_plane.reconciler import Reconciler
from deploy.providers.base import AppSpec
from tests.control_plane.conftest import live_server, make_settings, wait_for
from tests.control_plane.fake_provider import InstantProvider

BASE = "/api/2.0/serving-endpoints"
HOLD_S = 10.0  # how long a held deploy blocks at most
ANSWER_S = 1.0  # what every API call must answer within meanwhile
FIRST = {"served_entities": [{"name": "first", "entity_name": "dbrx-tiny", "entity_version": "1"}]}
SECOND = {
    "served_entities": [{"name": "second", "entity_name": "dbrx-tiny", "entity_version": "1"}]
}


class BlockingProvider(InstantProvider):
    """The instant provider, whose `deploy` blocks once `hold()` arms it, until `release()`
    or HOLD_S. It blocks before taking the provider's lock: listing and status answer."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()  # a held deploy started ...
        self.left = threading.Event()  # ... and returned (released, or after HOLD_S)
        self._armed = threading.Event()
        self._released = threading.Event()

    def hold(self) -> None:
        self._released.clear()
        self.entered.clear()
        self.left.clear()
        self._armed.set()

    def release(self) -> None:
        self._armed.clear()
        self._released.set()

    def deploy(self, spec: AppSpec) -> None:
        if self._armed.is_set():
            self.entered.set()
            self._released.wait(HOLD_S)
            self.left.set()
        super().deploy(spec)


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def only_app(provider: InstantProvider) -> str:
    (app,) = provider.apps
    return app


def test_the_api_answers_within_a_second_while_another_control_plane_deploys(
    postgres_url: str, tmp_path: Path
) -> None:
    provider = BlockingProvider()  # one cluster, seen by both control planes
    common: dict[str, Any] = {"shared_endpoints": [], "lease_ttl_s": 30, "retire_grace_s": 2.0}
    with (
        live_server(make_settings(postgres_url, tmp_path / "a", **common), provider) as one,
        live_server(make_settings(postgres_url, tmp_path / "b", **common), provider) as two,
    ):
        http = {server.url: server.client() for server in (one, two)}
        created = http[one.url].post(BASE, json={"name": "e", "config": FIRST})
        assert created.status_code == 200, created.text
        wait_for(lambda: http[two.url].get(f"{BASE}/e").json()["state"]["ready"] == "READY")
        with one.plane.sessions() as session:
            owner = session.get(Endpoint, created.json()["id"]).lease_owner
        holder, other = (one, two) if owner == one.plane.reconciler.owner else (two, one)
        assert owner == holder.plane.reconciler.owner

        # The live app vanishes (a lost node); its lease holder redeploys it and blocks.
        first_app = only_app(provider)
        provider.hold()
        provider.delete(first_app)
        assert provider.entered.wait(10), "the lease holder never redeployed the lost app"

        calls: dict[str, Callable[[], httpx.Response]] = {
            "PUT config": lambda: http[other.url].put(f"{BASE}/e/config", json=SECOND),
            "PATCH tags": lambda: http[other.url].patch(
                f"{BASE}/e/tags", json={"add_tags": [{"key": "during", "value": "deploy"}]}
            ),
            "PUT ai-gateway": lambda: http[other.url].put(
                f"{BASE}/e/ai-gateway", json={"usage_tracking_config": {"enabled": True}}
            ),
            "PUT rate-limits": lambda: http[other.url].put(
                f"{BASE}/e/rate-limits",
                json={"rate_limits": [{"calls": 7, "key": "endpoint", "renewal_period": "minute"}]},
            ),
            "GET (other)": lambda: http[other.url].get(f"{BASE}/e"),
            "GET (holder)": lambda: http[holder.url].get(f"{BASE}/e"),
        }
        answers = {what: timed(call) for what, call in calls.items()}
        still_blocked = not provider.left.is_set()
        provider.release()
        seconds = {what: round(took, 3) for what, (_, took) in answers.items()}
        print(f"API answers while a deploy was blocked: {seconds}")
        assert max(seconds.values()) < ANSWER_S, f"answers took {seconds} s"
        assert still_blocked, "the deploy returned before the API calls were done"
        for what, (response, _) in answers.items():
            assert response.status_code == 200, f"{what}: {response.text}"

        def converged() -> dict[str, Any] | None:
            body: dict[str, Any] = http[other.url].get(f"{BASE}/e").json()
            state = body["state"]
            done = (state["ready"], state["config_update"]) == ("READY", "NOT_UPDATING")
            return body if done and body["config"]["config_version"] == 2 else None

        view = wait_for(converged, timeout=30, what="the endpoint to converge to version 2")
        assert [e["name"] for e in view["config"]["served_entities"]] == ["second"]
        assert "pending_config" not in view
        assert {"key": "during", "value": "deploy"} in view["tags"]
        assert view["ai_gateway"]["usage_tracking_config"] == {"enabled": True}
        with one.plane.sessions() as session:
            stored = session.get(Endpoint, created.json()["id"])
            assert stored is not None and stored.rate_limits is not None
            assert [(r.calls, r.key) for r in stored.rate_limits] == [(7, "endpoint")]
        # The blocked reconcile planned from version 1: its outcome was not stored.
        assert holder.plane.reconciler.discarded >= 1
        # The first config's app, redeployed by the stale plan, is retired and deleted.
        wait_for(lambda: first_app not in provider.apps, timeout=30, what="v1's app deleted")
        for client in http.values():
            client.close()


def test_an_outcome_planned_before_a_config_update_is_discarded(
    postgres_url: str, tmp_path: Path
) -> None:
    provider = BlockingProvider()
    settings = make_settings(
        postgres_url, tmp_path, run_reconciler=False, shared_endpoints=[], retire_grace_s=2.0
    )
    engine = build_engine(postgres_url)
    upgrade(engine)
    sessions = session_factory(engine)
    reconciler = Reconciler(sessions, provider, settings, owner="only")
    try:
        with live_server(settings, provider) as server, server.client() as http:
            endpoint_id = http.post(BASE, json={"name": "e", "config": FIRST}).json()["id"]
            settle(reconciler, sessions, endpoint_id, version=1)
            first_app = only_app(provider)

            provider.hold()
            provider.delete(first_app)  # the tick below redeploys it, and blocks
            ticking = threading.Thread(target=reconciler.tick)
            ticking.start()
            assert provider.entered.wait(10)
            before = row(sessions, endpoint_id)
            updated, took = timed(lambda: http.put(f"{BASE}/e/config", json=SECOND))
            provider.release()
            ticking.join(timeout=30)
            assert updated.status_code == 200, updated.text
            assert took < ANSWER_S, f"the config update waited {took:.2f} s for the deploy"

            after = row(sessions, endpoint_id)
            # What the stale plan computed (v1 recovering, NOT_READY) was not stored ...
            assert (after.ready, after.deployments) == (before.ready, before.deployments)
            assert reconciler.discarded == 1
            # ... and the update stands as the API wrote it.
            assert after.pending_config is not None and after.pending_config.config_version == 2
            assert after.config_update == "IN_PROGRESS"
            assert after.generation == before.generation + 1

            # The next ticks plan from the new row.
            done = settle(reconciler, sessions, endpoint_id, version=2)
            assert done.config is not None
            assert [e.name for e in done.config.served_entities] == ["second"]
    finally:
        engine.dispose()


def row(sessions: sessionmaker[Session], endpoint_id: str) -> Endpoint:
    with sessions() as session:
        endpoint = session.get(Endpoint, endpoint_id)
        assert endpoint is not None
        return endpoint


def settle(
    reconciler: Reconciler, sessions: sessionmaker[Session], endpoint_id: str, version: int
) -> Endpoint:
    def ready() -> Endpoint | None:
        reconciler.tick()
        endpoint = row(sessions, endpoint_id)
        done = endpoint.ready == "READY" and endpoint.config_update == "NOT_UPDATING"
        return endpoint if done and endpoint.config_version == version else None

    settled: Endpoint = wait_for(ready, timeout=20, what=f"version {version} READY")
    return settled
