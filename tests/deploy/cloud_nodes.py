"""Local stand-ins for a node group's machines: Ray worker nodes started with exactly the
command the group's start-up script runs, joining the test session's Ray cluster.

The command is read back from what the cloud stores (an AWS launch template's user-data),
not rebuilt, so a script that stopped joining the cluster would fail the tests. The only
flags added describe the hardware a GPU instance has and this machine lacks: one GPU (the
replicas run the instant engine, which never touches it) and one CPU.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray

REPO_ROOT = Path(__file__).resolve().parents[2]
SIMULATED_HARDWARE = ["--num-gpus=1", "--num-cpus=1"]


def ray_start_command(user_data: str) -> list[str]:
    """The `ray start …` argv of the start-up script's `docker run` line (what follows the
    image name)."""
    [line] = [ln for ln in user_data.splitlines() if ln.startswith("docker run ")]
    words = shlex.split(line)
    start = words.index("ray")
    assert words[start + 1] == "start", line
    return words[start:]


class LocalNodes:
    """Ray worker nodes on this machine, one per `start`; `stop` ends them (their own
    process groups only, never `ray stop`, which would end every Ray here)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []
        self.node_ids: list[str] = []

    def start(self, argv: list[str], timeout: float = 60) -> str:
        """Start one node; wait until the cluster lists it alive; return its node id."""
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(REPO_ROOT),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        log = open(self.logs / f"node-{len(self.processes)}.log", "wb")  # noqa: SIM115
        self.processes.append(
            subprocess.Popen(
                [*argv, *SIMULATED_HARDWARE],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        deadline = time.monotonic() + timeout
        while True:
            new = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in before]
            if new:
                self.node_ids.append(new[0])
                return str(new[0])
            if time.monotonic() > deadline or self.processes[-1].poll() is not None:
                raise AssertionError(f"the node did not join: {self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self) -> str:
        return "".join(p.read_text(errors="replace")[-1500:] for p in self.logs.glob("node-*.log"))

    def stop(self, timeout: float = 60) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # Other tests size the cluster from its live nodes: wait until these are gone.
        deadline = time.monotonic() + timeout
        while any(n["Alive"] and n["NodeID"] in self.node_ids for n in ray.nodes()):
            if time.monotonic() > deadline:
                raise AssertionError("stopped nodes are still alive in the cluster")
            time.sleep(0.5)
        self.processes.clear()
