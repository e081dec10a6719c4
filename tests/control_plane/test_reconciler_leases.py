"""Two control planes on one PostgreSQL: each endpoint is reconciled by one lease holder at
a time; an expired lease (a dead process) is taken over and the work finished."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import select

from control_plane.db import build_engine, session_factory, upgrade
from control_plane.db.models import Endpoint
from control_plane.reconciler import Reconciler
from tests.control_plane.conftest import live_server, make_settings, wait_for
from tests.control_plane.fake_provider import InstantProvider

CONFIG = {"served_entities": [{"entity_name": "dbrx-tiny", "entity_version": "1"}]}


def test_leases_give_each_endpoint_one_reconciler_and_expire_to_another(
    postgres_url: str, tmp_path: Path
) -> None:
    provider = InstantProvider(ready_after=10**9)  # stays IN_PROGRESS while we look
    settings = make_settings(
        postgres_url, tmp_path, run_reconciler=False, lease_ttl_s=1.5, shared_endpoints=[]
    )
    engine = build_engine(postgres_url)
    upgrade(engine)
    sessions = session_factory(engine)
    first = Reconciler(sessions, provider, settings, owner="first")
    second = Reconciler(sessions, provider, settings, owner="second")
    try:
        with live_server(settings, provider) as server:
            for name in ("a", "b", "c"):
                body = {"name": name, "config": CONFIG}
                assert server.client().post("/api/2.0/serving-endpoints", json=body).is_success

        errors: list[BaseException] = []

        def hammer(reconciler: Reconciler) -> None:
            try:
                for _ in range(10):
                    reconciler.tick()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(r,)) for r in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        with sessions() as session:
            owners = {e.name: e.lease_owner for e in session.scalars(select(Endpoint))}
        assert set(owners) == {"a", "b", "c"} and set(owners.values()) <= {"first", "second"}
        assert sorted(provider.deploy_calls) == sorted(set(provider.deploy_calls))
        assert len(provider.deploy_calls) == 3  # one app per endpoint, deployed once

        # "first" dies; after its leases expire "second" owns and finishes everything
        held_by_first = {n for n, o in owners.items() if o == "first"}
        second.tick()
        with sessions() as session:
            still = {e.name for e in session.scalars(select(Endpoint)) if e.lease_owner == "first"}
        assert still == held_by_first  # not stolen before expiry
        time.sleep(settings.lease_ttl_s + 0.2)
        provider.ready_after = 0

        def all_ready() -> bool:
            second.tick()
            with sessions() as session:
                rows = session.scalars(select(Endpoint)).all()
            return all(e.ready == "READY" and e.lease_owner == "second" for e in rows)

        wait_for(all_ready, timeout=20, what="second to take over and finish")
    finally:
        engine.dispose()
