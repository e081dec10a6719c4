"""The Dockerfiles under deploy/docker/, checked without Docker (it cannot run here): every
file they copy from the build context exists and is not excluded by their .dockerignore,
they copy every package the wheel is built from, their entry commands are the ones
README.md documents, their final stages run as a non-root user, and the versions they pin
(Ray, Python, torch) agree with each other, the chart and what the tests run. The control
plane's entrypoint script runs for real under `sh`, with a recording stand-in for `ray`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML: kubernetes-validate's dependency

from tests.deploy.fetch_helm import REPO_ROOT

DOCKER = REPO_ROOT / "deploy" / "docker"
CONTROL_PLANE = DOCKER / "control-plane.Dockerfile"
WORKER = DOCKER / "worker.Dockerfile"
ENTRYPOINT_SCRIPT = DOCKER / "entrypoint.sh"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM it belongs to (-1: before any FROM)


def instructions(dockerfile: Path) -> list[Instruction]:
    """The instructions, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{dockerfile.name} ends inside a continued line"
    found = []
    stage = -1
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        found.append(Instruction(keyword, arguments.strip(), stage))
    return found


def build_args(dockerfile: Path) -> dict[str, str]:
    found = {}
    for instruction in instructions(dockerfile):
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, _, default = instruction.arguments.partition("=")
            found[name] = default
    return found


def exec_form(dockerfile: Path, keyword: str) -> list[str] | None:
    """The last ENTRYPOINT or CMD, which must be in exec (JSON) form: in shell form the
    program would not be PID 1's child that gets SIGTERM."""
    found = [i for i in instructions(dockerfile) if i.keyword == keyword]
    if not found:
        return None
    value = json.loads(found[-1].arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), value
    return value


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    destination: str
    stage: int


def context_copies(dockerfile: Path) -> list[Copy]:
    """COPY/ADD from the build context (not `--from` another stage or image)."""
    copies = []
    for instruction in instructions(dockerfile):
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(instruction.arguments)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue
        copies.append(Copy(paths[:-1], paths[-1], instruction.stage))
    return copies


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` any folders, `*` and `?` within one name."""
    body = re.escape(glob.strip("/"))
    body = body.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
    body = body.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.compile(body + "$")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders
    decides; a pattern starting with '!' re-includes."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern(pattern[1:] if negated else pattern)
        if any(regex.match(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def dockerignore(dockerfile: Path) -> list[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} keeps .venv and caches out of the build context"
    lines = ignore.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def readme_section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("\n## Deploying on Kubernetes")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def documented_command(dockerfile: Path) -> str:
    """The entry command README.md's Kubernetes section gives for the image: the first
    `code span` after the Dockerfile's path on its line of the images table."""
    path = dockerfile.relative_to(REPO_ROOT).as_posix()
    lines = [line for line in readme_section().splitlines() if f"`{path}`" in line]
    assert lines, f"README.md's Kubernetes section does not mention {path}"
    after = lines[0].split(f"`{path}`", 1)[1]
    spans = re.findall(r"`([^`]+)`", after)
    assert spans, f"README.md gives no command for {path}"
    return spans[0]


@pytest.mark.parametrize("dockerfile", [CONTROL_PLANE, WORKER], ids=lambda p: p.stem)
def test_every_copied_file_exists_in_the_build_context(dockerfile: Path) -> None:
    patterns = dockerignore(dockerfile)
    copies = context_copies(dockerfile)
    assert copies
    for copy in copies:
        for source in copy.sources:
            assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: missing"
            assert not ignored(source, patterns), f"{dockerfile.name}: {source} is dockerignored"
    assert ignored(".venv", patterns) and ignored("control_plane/__pycache__", patterns)


@pytest.mark.parametrize("dockerfile", [CONTROL_PLANE, WORKER], ids=lambda p: p.stem)
def test_the_wheel_is_built_from_every_package(dockerfile: Path) -> None:
    """A package left out of the build stage would be missing from the installed wheel."""
    setuptools = pyproject()["tool"]["setuptools"]  # type: ignore[index]
    packages = {pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]}
    build_stage = {
        source for copy in context_copies(dockerfile) if copy.stage == 0 for source in copy.sources
    }
    assert packages | {"pyproject.toml", "README.md"} <= build_stage  # README: the wheel's readme


def test_control_plane_image_runs_the_documented_command() -> None:
    command = exec_form(CONTROL_PLANE, "CMD")
    assert command is not None
    assert " ".join(command) == documented_command(CONTROL_PLANE) == "moeserve run"
    assert command[0] in pyproject()["project"]["scripts"]  # type: ignore[index]
    # tini reaps the Ray processes the entrypoint starts and passes SIGTERM to moeserve.
    entrypoint = exec_form(CONTROL_PLANE, "ENTRYPOINT")
    assert entrypoint is not None and entrypoint[:2] == ["tini", "--"]
    (script_copy,) = [
        c for c in context_copies(CONTROL_PLANE) if c.destination.endswith(entrypoint[2])
    ]
    assert script_copy.sources == [ENTRYPOINT_SCRIPT.relative_to(REPO_ROOT).as_posix()]


def test_worker_image_runs_the_documented_command() -> None:
    entrypoint = exec_form(WORKER, "ENTRYPOINT") or []
    command = exec_form(WORKER, "CMD") or []
    assert " ".join(entrypoint + command) == documented_command(WORKER) == "ray start --block"


def test_chart_runs_the_image_command() -> None:
    template = (REPO_ROOT / "helm" / "moeserve" / "templates" / "deployment.yaml").read_text()
    assert f"args: {json.dumps(exec_form(CONTROL_PLANE, 'CMD'))}" in template


@pytest.mark.parametrize("dockerfile", [CONTROL_PLANE, WORKER], ids=lambda p: p.stem)
def test_final_stage_runs_as_a_non_root_user(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    final = max(step.stage for step in steps)
    users = [step.arguments for step in steps if step.keyword == "USER" and step.stage == final]
    assert users, f"{dockerfile.name}: no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_pinned_versions_agree() -> None:
    import ray

    control_plane, worker = build_args(CONTROL_PLANE), build_args(WORKER)
    values = yaml.safe_load((REPO_ROOT / "helm" / "moeserve" / "values.yaml").read_text())
    # A Ray driver (the control plane) and its cluster must run one Ray and one Python.
    assert control_plane["RAY_VERSION"] == worker["RAY_VERSION"] == ray.__version__
    assert values["rayCluster"]["rayVersion"] == ray.__version__
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert worker["RAY_IMAGE"].startswith(f"rayproject/ray:{ray.__version__}-{python}-")
    assert control_plane["PYTHON_IMAGE"].startswith(
        f"python:{sys.version_info.major}.{sys.version_info.minor}-"
    )
    assert worker["PYTHON_IMAGE"] == control_plane["PYTHON_IMAGE"]
    # torch: the version `make setup` installs, which the tests ran against.
    makefile = (REPO_ROOT / "Makefile").read_text()
    (pin,) = re.findall(r"^TORCH_PIN \?= torch==(\S+)$", makefile, re.MULTILINE)
    assert control_plane["TORCH_VERSION"] == worker["TORCH_VERSION"] == pin
    assert control_plane["TORCH_INDEX_URL"].endswith("/whl/cpu")  # no CUDA in the control plane


# -- the control plane's entrypoint -------------------------------------------------------------


def run_entrypoint(tmp_path: Path, address: str | None, *command: str) -> tuple[str, list[str]]:
    """Run entrypoint.sh with `command`; a stand-in `ray` on PATH records its arguments."""
    record = tmp_path / "ray-args"
    fake_ray = tmp_path / "bin" / "ray"
    fake_ray.parent.mkdir(exist_ok=True)
    fake_ray.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n')
    fake_ray.chmod(0o755)
    env = {
        k: v for k, v in os.environ.items() if k not in ("MOESERVE_RAY_ADDRESS", "RAY_JOIN_ARGS")
    }
    env["PATH"] = f"{fake_ray.parent}:{env['PATH']}"
    env["RAY_JOIN_ARGS"] = "--object-store-memory=100000000 --block-size=1"
    if address is not None:
        env["MOESERVE_RAY_ADDRESS"] = address
    done = subprocess.run(
        ["sh", str(ENTRYPOINT_SCRIPT), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    ray_args = record.read_text().splitlines() if record.exists() else []
    return done.stdout, ray_args


def test_entrypoint_joins_the_ray_cluster_as_a_node_without_resources(tmp_path: Path) -> None:
    out, ray_args = run_entrypoint(tmp_path, "moeserve-ray-head-svc.ns.svc:6379", "echo", "served")
    assert out == "served\n"  # then runs its arguments (exec)
    assert ray_args == [
        "start",
        "--address=moeserve-ray-head-svc.ns.svc:6379",
        "--num-cpus=0",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--object-store-memory=100000000",
        "--block-size=1",
    ]


@pytest.mark.parametrize("address", [None, "", "auto", "ray://head:10001"])
def test_entrypoint_joins_nothing_without_a_cluster_address(
    tmp_path: Path, address: str | None
) -> None:
    out, ray_args = run_entrypoint(tmp_path, address, "echo", "served")
    assert (out, ray_args) == ("served\n", [])


def test_entrypoint_stops_when_joining_fails(tmp_path: Path) -> None:
    failing = tmp_path / "bin" / "ray"
    failing.parent.mkdir()
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    env = {**os.environ, "PATH": f"{failing.parent}:{os.environ['PATH']}"}
    env["MOESERVE_RAY_ADDRESS"] = "head:6379"
    done = subprocess.run(
        ["sh", str(ENTRYPOINT_SCRIPT), "echo", "served"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout) == (3, "")
