"""Generated bad input (issue 14): schemathesis against the live app's own OpenAPI — the
management, query and billing APIs — with the tokens of two workspaces.

Every case must get an answer that is not a 5xx and that matches the schema the route
declares. The control plane runs as deployed (uvicorn, SQLite, Ray Serve replicas of the
instant engine), with one endpoint per task so that query routes reach the replicas, and a
Stripe webhook secret so that the webhook checks signatures. Endpoints the runs themselves
create (generated bodies are often valid) get the in-memory fake provider's apps instead
of Ray Serve ones: the point is the API's handling of input, and a 2-core machine would
spend minutes deploying and deleting them. `make test` runs a short seeded
run (at least 1,000 cases); `make fuzz` a long one with a random seed
(`MOESERVE_FUZZ_EXAMPLES`, `MOESERVE_FUZZ_SEED`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploy.providers.base import AppNotFound, AppSpec, AppStatus, Workload
from deploy.providers.local import LocalRayProvider
from tests.control_plane.conftest import ADMIN_TOKEN, live_server, make_settings
from tests.control_plane.fake_provider import InstantProvider
from tests.control_plane.query_fixtures import create_endpoint
from tests.control_plane.test_tenancy import new_user, new_workspace
from workers.testing.instant import instant_engine_factory

SCHEMATHESIS = Path(sys.executable).with_name("st")
CHECKS = "not_a_server_error,response_schema_conformance"
EXAMPLES = int(os.environ.get("MOESERVE_FUZZ_EXAMPLES", "8"))
SEED = os.environ.get("MOESERVE_FUZZ_SEED", "20261206")
MIN_CASES = 1_000


def fuzz(url: str, token: str, seed: str) -> tuple[int, str]:
    """One schemathesis run with `token`; returns its exit status and its report."""
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "2",
        "--request-timeout",
        "60",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    if seed != "random":
        command += ["--seed", seed, "--generation-deterministic"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    return done.returncode, done.stdout + done.stderr


class FixtureAppsOnRay:
    """Ray Serve (instant engine) for the apps deployed before `fuzzing` is set; the
    in-memory fake for every app deployed after."""

    name = "local"

    def __init__(self) -> None:
        self.ray = LocalRayProvider(engine_factory=instant_engine_factory)
        self.fake = InstantProvider()
        self.fuzzing = False
        self.on_ray: set[str] = set()

    def _of(self, app: str) -> Any:
        return self.ray if app in self.on_ray else self.fake

    def start(self) -> None:
        self.ray.start()

    def stop(self) -> None:
        self.ray.stop()

    def check_supported(self, workload: Workload) -> None:
        self.ray.check_supported(workload)

    def shortfall(self, workload: Workload) -> str | None:
        return None if self.fuzzing else self.ray.shortfall(workload)

    def deploy(self, spec: AppSpec) -> None:
        if not self.fuzzing:
            self.on_ray.add(spec.name)
        self._of(spec.name).deploy(spec)

    def status(self, name: str) -> AppStatus | None:
        status: AppStatus | None = self._of(name).status(name)
        return status

    def list_apps(self, prefix: str) -> dict[str, AppStatus]:
        return {**self.fake.list_apps(prefix), **self.ray.list_apps(prefix)}

    def delete(self, name: str) -> None:
        self._of(name).delete(name)

    def handle(self, name: str) -> Any:
        if name not in self.on_ray:
            raise AppNotFound(name)  # a fake app runs no replicas
        return self.ray.handle(name)

    def logs(self, name: str) -> str:
        logs: str = self._of(name).logs(name)
        return logs


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("ray_cluster")
def test_generated_requests_get_no_5xx_and_match_the_schema(tmp_path: Path) -> None:
    provider = FixtureAppsOnRay()
    settings = make_settings(
        f"sqlite:///{tmp_path / 'moeserve.db'}",
        tmp_path,
        shared_endpoints=[],
        retire_grace_s=2.0,
        billing={"stripe_webhook_secret": "whsec_fuzz"},
    )
    try:
        with live_server(settings, provider) as live:
            with live.client() as http:
                create_endpoint(http, "fuzz-chat")
                create_endpoint(http, "fuzz-completions", task="llm/v1/completions")
                create_endpoint(http, "fuzz-embeddings", task="llm/v1/embeddings")
            provider.fuzzing = True
            other = new_user(live, new_workspace(live, "fuzz-other"), "mallory", admin=True)
            cases, reports = 0, []
            started = time.monotonic()
            for who, token in (("workspace admin B", other), ("workspace admin A", ADMIN_TOKEN)):
                status, report = fuzz(live.url, token, SEED)
                generated = re.search(r"(\d+) generated", report)
                assert generated, report[-3000:]
                cases += int(generated.group(1))
                reports.append(f"--- {who}: exit {status}\n{report}")
                assert status == 0, f"schemathesis found failures as {who}:\n{report[-12000:]}"
            elapsed = time.monotonic() - started
    finally:  # the server has stopped, its reconciler too: delete the fixture's Serve apps
        from ray import serve

        for app in provider.on_ray & set(serve.status().applications):
            serve.delete(app)
    print(f"fuzz: {cases} cases in {elapsed:.0f} s, seed {SEED}, 0 failures")
    assert cases >= MIN_CASES, "\n".join(reports)[-3000:]
