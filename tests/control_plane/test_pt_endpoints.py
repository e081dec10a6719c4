"""Provisioned-throughput endpoints the current Databricks way, through the real
`databricks-sdk`: `create_provisioned_throughput_endpoint` (model units) and
`update_provisioned_throughput_endpoint_config`. A model unit is one throughput chunk, held
all the time, and bills as provisioned chunks do: chunks x DBU per chunk-hour x hours."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from databricks.sdk.service.serving import PtEndpointCoreConfig, PtServedModel
from sqlalchemy import select

from billing.capacity import CapacityInterval
from billing.metering import live_records
from tests.control_plane.conftest import LiveServer, wait_for
from tests.control_plane.test_sdk_and_mlflow import sdk


def _intervals(server: LiveServer, name: str) -> list[CapacityInterval]:
    with server.plane.sessions() as session:
        return list(
            session.scalars(
                select(CapacityInterval)
                .where(CapacityInterval.endpoint_name == name)
                .order_by(CapacityInterval.started_at)
            )
        )


def test_model_units_create_update_and_bill_as_chunks(instant_server: LiveServer) -> None:
    client = sdk(instant_server)
    client.serving_endpoints.create_provisioned_throughput_endpoint(
        name="pt-units",
        config=PtEndpointCoreConfig(
            served_entities=[
                PtServedModel(
                    entity_name="dbrx-tiny", entity_version="1", provisioned_model_units=2
                )
            ]
        ),
    )
    got = client.serving_endpoints.get("pt-units")
    config = got.config or got.pending_config
    assert config is not None and config.served_entities
    (entity,) = config.served_entities
    chunk = instant_server.plane.chunk_size("dbrx", "dbrx-tiny", "1")
    assert entity.provisioned_model_units == 2
    assert entity.min_provisioned_throughput == entity.max_provisioned_throughput == 2 * chunk
    assert entity.name == "dbrx-tiny-1"

    def ready() -> bool:
        state = client.serving_endpoints.get("pt-units").state
        return state is not None and str(state.ready.value if state.ready else "") == "READY"

    wait_for(ready, what="the provisioned endpoint")
    [interval] = _intervals(instant_server, "pt-units")
    assert interval.provisioned_chunks == 2
    plane = instant_server.plane
    start = interval.started_at
    records = [
        r
        for r in live_records(plane.engine, plane.billing.context, start + timedelta(seconds=90))
        if r.endpoint_id == interval.endpoint_id
    ]
    rate = plane.rate_cards.at(start).throughput("dbrx", "dbrx-tiny", "1").dbu_per_chunk_hour
    assert {r.usage_type for r in records} == {"COMPUTE_TIME"}
    assert sum(r.usage_quantity for r in records) == 2 * rate * 90 / 3600 == Decimal("5.49")

    client.serving_endpoints.update_provisioned_throughput_endpoint_config(
        name="pt-units",
        config=PtEndpointCoreConfig(
            served_entities=[
                PtServedModel(
                    entity_name="dbrx-tiny",
                    entity_version="1",
                    provisioned_model_units=1,
                    name="dbrx-tiny-1",
                )
            ]
        ),
    )

    def updated() -> bool:
        live = client.serving_endpoints.get("pt-units").config
        return bool(
            live
            and live.config_version == 2
            and live.served_entities
            and live.served_entities[0].provisioned_model_units == 1
        )

    wait_for(updated, what="the update to one model unit")
    assert _intervals(instant_server, "pt-units")[-1].provisioned_chunks == 1


def test_model_units_are_refused_with_other_capacity_fields(instant_server: LiveServer) -> None:
    with instant_server.client() as http:
        for extra in (
            {"workload_size": "Small"},
            {"min_provisioned_throughput": 2900},
            {"scale_to_zero_enabled": True},
        ):
            body = {
                "name": "mixed",
                "config": {
                    "served_entities": [
                        {"entity_name": "dbrx-tiny", "provisioned_model_units": 1, **extra}
                    ]
                },
            }
            refused = http.post("/api/2.0/serving-endpoints", json=body)
            assert refused.status_code == 400, refused.text
            assert "provisioned_model_units" in refused.json()["message"]
        zero = http.post(
            "/api/2.0/serving-endpoints/pt",
            json={
                "name": "zero",
                "config": {
                    "served_entities": [{"entity_name": "dbrx-tiny", "provisioned_model_units": 0}]
                },
            },
        )
        assert zero.status_code == 400, zero.text
        missing = http.put(
            "/api/2.0/serving-endpoints/pt/nothing-here/config",
            json={
                "config": {
                    "served_entities": [{"entity_name": "dbrx-tiny", "provisioned_model_units": 1}]
                }
            },
        )
        assert missing.status_code == 404, missing.text
