"""Serving config validation and the pure Serve options it implies (no Ray needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.model.source import ModelSource
from workers.serve.app import deployment_options
from workers.serve.config import AutoscalingSettings, WorkerAppConfig

TINY = ModelSource(preset="dbrx-tiny")


def test_sharded_replica_gets_one_strict_pack_bundle_per_device() -> None:
    config = WorkerAppConfig(model=TINY, shards=2, device="cuda", cpus_per_shard=2)
    options = deployment_options(config)
    assert options["placement_group_bundles"] == [{"CPU": 2, "GPU": 1}] * 2
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}


def test_autoscaling_may_scale_to_zero() -> None:
    config = WorkerAppConfig(
        model=TINY, num_replicas=None, autoscaling=AutoscalingSettings(max_replicas=3)
    )
    options = deployment_options(config)
    assert options["autoscaling_config"]["min_replicas"] == 0
    assert options["autoscaling_config"]["max_replicas"] == 3
    assert "num_replicas" not in options and "placement_group_bundles" not in options


def test_many_requests_in_flight_per_replica_by_default() -> None:
    assert deployment_options(WorkerAppConfig(model=TINY))["max_ongoing_requests"] >= 128


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"shards": 3}, "divisible by 3"),
        ({"shards": 3, "parallel_mode": "expert"}, "n_experts"),
        ({"num_replicas": 2, "autoscaling": {"max_replicas": 2}}, "not both"),
        ({"num_replicas": None}, "set num_replicas"),
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}, "num_replicas": None}, "exceeds"),
        ({"model": {"preset": "dbrx-instruct"}}, "load_checkpoint"),
        ({"model": {}}, "exactly one"),
    ],
)
def test_bad_configs_say_what_to_change(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkerAppConfig.model_validate({"model": {"preset": "dbrx-tiny"}, **fields})
