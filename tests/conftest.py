"""Shared fixtures. Ray starts at most once per test session, only for tests that ask."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray
    from ray import serve

    # Logical CPUs: more than this 2-core machine has, so that multi-bundle placement
    # groups (sharded replicas) and several small apps can be scheduled side by side.
    # Test modules are importable in Ray workers too (actors defined in tests).
    ray.init(
        address="local",  # a new instance, never one `ray start` left running on the machine
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()
