"""`moeserve` console script. `moeserve run` starts the whole embedded platform: database
migrations, local Ray (or attach with --ray-address), the API, and the shared endpoints
(`databricks-dbrx-tiny` for chat, `databricks-dbrx-tiny-embeddings`); it shows progress
while the models load, then prints the URLs, the admin token (when generated) and examples
to paste. Ctrl-C stops everything."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from control_plane.billing_cli import add_billing_commands, run_billing
from control_plane.process_env import keep_local_ray_on_loopback, prefer_same_loop_routing
from control_plane.settings import RayListen, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moeserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the control plane and the shared endpoints")
    run.add_argument("--host", help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port (default 8080)")
    run.add_argument("--db", help="database URL (default: SQLite in the data dir)")
    run.add_argument("--ray-address", help="attach to this Ray cluster instead of a local one")
    run.add_argument(
        "--data-dir", type=Path, help="where the default SQLite database lives (default .moeserve)"
    )
    migrate = commands.add_parser(
        "migrate",
        help="bring the database schema up to date and exit (what `run` does first; for a "
        "deployment's migration job)",
    )
    migrate.add_argument("--db", help="database URL (default: SQLite in the data dir)")
    migrate.add_argument("--data-dir", type=Path, help="where the SQLite file lives")
    add_billing_commands(commands)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "database_url": args.db,
            "ray_address": getattr(args, "ray_address", None),
            "data_dir": args.data_dir,
        }.items()
        if value is not None
    }
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    prefer_same_loop_routing()  # before anything imports ray.serve
    args = _parser().parse_args(argv)
    logging.basicConfig(  # the server narrates; one-shot jobs print their own result
        level=logging.INFO if args.command == "run" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        return run(settings_from(args))
    if args.command == "billing":
        return run_billing(args, settings_from(args))
    if args.command == "migrate":
        return migrate(settings_from(args))
    return 2


def migrate(settings: Settings) -> int:
    """Bring the schema to the newest revision (under an advisory lock on PostgreSQL, so it
    is safe beside replicas that are starting) and say where it stands."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    from control_plane.db import build_engine, upgrade
    from control_plane.db.migrate import current_revision

    engine = build_engine(settings.resolved_database_url())
    where = engine.url.render_as_string(hide_password=True)
    print(f"moeserve migrate: migrating {where}", flush=True)
    try:
        upgrade(engine)
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        reason = str(cause).splitlines()[0]
        print(f"moeserve migrate: failed, schema unchanged: {reason}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"moeserve migrate: {where} is at revision {revision}")
    return 0


def run(settings: Settings) -> int:
    if settings.ray_address is None and settings.ray_listen is RayListen.LOOPBACK:
        keep_local_ray_on_loopback()  # before create_app imports ray
    import uvicorn

    from control_plane.app import create_app

    problem = clouds_preflight(settings)
    if problem is not None:
        print(f"moeserve: cannot start: {problem}", file=sys.stderr, flush=True)
        return 2
    app = create_app(settings)
    server = uvicorn.Server(http_config(app, settings))
    threading.Thread(
        target=_announce, args=(server, app, settings), name="announce", daemon=True
    ).start()
    # uvicorn drains on SIGINT and SIGTERM alike, then re-raises the signal to the handler
    # that was there before it: for both, Python's KeyboardInterrupt, so a stop by
    # Kubernetes, Docker or systemd (SIGTERM) ends like Ctrl-C, with status 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()  # a failed start-up exits with uvicorn's status 3 from in here
    print("moeserve stopped", flush=True)
    return 0


def clouds_preflight(settings: Settings) -> str | None:
    """Why the configured clouds cannot be used (their SDK missing, credentials missing or
    refused), before anything starts; None when each answered."""
    from deploy.clouds.base import NodeGroupError

    try:
        for cloud, groups in settings.clouds.node_groups().items():
            try:
                identity = groups.check_credentials()
            except NodeGroupError as exc:
                return f"{cloud}: {exc}"
            print(f"moeserve: {cloud} node groups act as {identity}", flush=True)
    except NodeGroupError as exc:  # an SDK not installed
        return str(exc)
    return None


def http_config(app: Any, settings: Settings, **overrides: Any) -> Any:
    """The uvicorn configuration `moeserve run` serves `app` with (`overrides`: for tests,
    e.g. port=0)."""
    import uvicorn

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: any local
        # process could then put any address in logs and the audit log.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": settings.trusted_proxies or None,
    }
    return uvicorn.Config(app, **{**options, **overrides})


def _announce(server: Any, app: Any, settings: Settings) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.2)
    plane = app.state.plane
    base = settings.base_url()
    print(f"\nmoeserve is up at {base} (API docs: {base}/docs)", flush=True)
    print(f"billing dashboard: {base}/billing (sign in with an admin token)", flush=True)
    # Only a token generated now is printed (once): one the operator supplied, or one
    # generated on an earlier start, never reaches the output.
    token = plane.generated_admin_token
    if token:
        print(f"admin token (shown once; keep it): {token}", flush=True)
    for shared in settings.shared_endpoints:
        _wait_ready(plane, shared.name, server)
    if server.should_exit or not settings.shared_endpoints:
        return
    print("\nTry it:", flush=True)
    if not token:
        source = "MOESERVE_ADMIN_TOKEN" if settings.admin_token else "printed on first start"
        print(f"  export DATABRICKS_TOKEN=...  (an admin token: {source})", flush=True)
    print(_examples(settings, base, token), flush=True)
    print("Ctrl-C stops moeserve.", flush=True)


def _examples(settings: Settings, base: str, token: str | None) -> str:
    """Commands to paste: a chat completion (curl and openai) and embeddings, on the shared
    endpoints of those tasks; with `token` (generated now), or else reading
    `$DATABRICKS_TOKEN`."""
    from control_plane.endpoints.config import Task

    header = (
        f"'Authorization: Bearer {token}'" if token else '"Authorization: Bearer $DATABRICKS_TOKEN"'
    )
    key = f"'{token}'" if token else "__import__('os').environ['DATABRICKS_TOKEN']"

    by_task = {shared.task: shared.name for shared in reversed(settings.shared_endpoints)}
    lines = []
    chat = by_task.get(Task.CHAT)
    if chat is not None:
        body = '{"messages": [{"role": "user", "content": "What is a mixture of experts?"}], '
        body += '"max_tokens": 32}'
        lines += [
            f"  curl -s {base}/serving-endpoints/{chat}/invocations \\",
            f"    -H {header} -H 'Content-Type: application/json' \\",
            f"    -d {shlex.quote(body)}",
            "",
            '  python -c "from openai import OpenAI; '
            f"c = OpenAI(api_key={key}, base_url='{base}/serving-endpoints'); "
            f"print(c.chat.completions.create(model='{chat}', max_tokens=32, "
            "messages=[{'role': 'user', 'content': 'Hello'}]).choices[0].message.content)\"",
            "",
        ]
    embeddings = by_task.get(Task.EMBEDDINGS)
    if embeddings is not None:
        lines += [
            '  python -c "from openai import OpenAI; '
            f"c = OpenAI(api_key={key}, base_url='{base}/serving-endpoints'); "
            f"print(len(c.embeddings.create(model='{embeddings}', input='Hello').data[0]"
            '.embedding))"',
            "",
        ]
    lines.append(f"  databricks-sdk: WorkspaceClient(host='{base}', token={key}).serving_endpoints")
    return "\n".join(lines)


def _wait_ready(plane: Any, name: str, server: Any) -> None:
    from control_plane.db.models import Endpoint
    from control_plane.endpoints.states import ConfigUpdate, Ready

    started = time.monotonic()
    last = ""
    while not server.should_exit:
        with plane.sessions() as session:
            endpoint = session.scalars(
                select(Endpoint).where(Endpoint.name == name, Endpoint.workspace_id.is_(None))
            ).first()
        if endpoint is None:
            return
        states = endpoint.deployments.states.values()
        words = " ".join(sorted({state.deployment for state in states}))
        line = f"{endpoint.ready}/{endpoint.config_update} {words}"
        elapsed = time.monotonic() - started
        if endpoint.ready == Ready.READY:
            print(f"{name}: READY ({elapsed:.1f} s)", flush=True)
            return
        if endpoint.config_update == ConfigUpdate.UPDATE_FAILED:
            messages = "; ".join(state.deployment_state_message for state in states)
            print(f"{name}: FAILED: {messages}", file=sys.stderr, flush=True)
            return
        if line != last:
            print(f"{name}: loading the model ... {line} ({elapsed:.0f} s)", flush=True)
            last = line
        time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
