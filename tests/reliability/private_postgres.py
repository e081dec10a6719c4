"""A private PostgreSQL cluster for fault tests that stop and restart the database: the
machine's shared server (127.0.0.1:5432) serves other tests at the same time and is never
touched.

`private_postgres()` runs the installed server binaries (`/usr/lib/postgresql/*/bin`):
initdb into a fresh directory owned by the `postgres` user (initdb refuses root), then
`pg_ctl start` on a free 127.0.0.1 port, trust auth, its unix socket in that directory.
`PrivatePostgres.stop()` / `start()` stop it (`-m fast`: sessions are terminated, as a
restart or a failover does) and start it again on the same port and data. The cluster is
stopped and its directory removed on the way out.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

DATABASE = "moeserve"


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory, if initdb and pg_ctl are there and
    the `postgres` user exists to run them."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if not found or shutil.which("runuser") is None:
        return None
    try:
        subprocess.run(["id", "-u", "postgres"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    bin_dir = Path(found[-1]).parent
    return bin_dir if (bin_dir / "pg_ctl").exists() else None


@dataclass
class PrivatePostgres:
    bin_dir: Path
    root: Path  # owned by postgres: data/, the unix socket, the server log
    port: int

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the test database, over TCP as a remote database is reached."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _as_postgres(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c max_connections=100"
        )
        self._as_postgres(
            str(self.bin_dir / "pg_ctl"),
            "start",
            "-w",
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(
            str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.root / "data")
        )

    def running(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "".join((self.root / "server.log").read_text().splitlines(True)[-lines:])
        except OSError as error:
            return repr(error)


@contextmanager
def private_postgres(bin_dir: Path, port: int) -> Iterator[PrivatePostgres]:
    """A started cluster with an empty `moeserve` database; stopped and removed afterwards."""
    # Not under pytest's tmp_path: its parents are root's (mode 0700), which the postgres
    # user cannot traverse. Short, too: a unix socket path has ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="moeserve-pg-"))
    shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o700)
    cluster = PrivatePostgres(bin_dir, root, port)
    try:
        cluster._as_postgres(
            str(bin_dir / "initdb"),
            "-D",
            str(root / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            timeout=120,
        )
        cluster.start()
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True
        ) as admin:
            admin.execute(f'CREATE DATABASE "{DATABASE}"')
        yield cluster
    finally:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                cluster.stop("immediate")
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                if not (root / "data" / "postmaster.pid").exists():
                    break
                time.sleep(0.5)
        shutil.rmtree(root, ignore_errors=True)
