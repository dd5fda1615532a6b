"""``herald serve`` (the web front end) and ``herald up`` (the whole system on this machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import click
import uvicorn
from sqlalchemy import select

from herald.cli.data import open_database, record_owed
from herald.cli.logs import setup_logging
from herald.cli.main import Context, pass_ctx
from herald.config import Settings
from herald.tracker.demo import DEMO, DEMO_PROJECT
from herald.tracker.loader import load_document
from herald.tracker.models import Project


def _serve(settings: Settings, host: str | None, port: int | None) -> None:
    from herald.web import create_app

    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the same signal again so the default
    # action kills the process (exit -15). For herald a handled stop is a clean exit: absorb the re-raise.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(
            create_app(settings),
            host=host or settings.http_host,
            port=port if port is not None else settings.http_port,
            log_level="warning",
            access_log=False,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command("serve")
@click.option("--host", default=None, help="Listen address (default: http_host).")
@click.option("--port", type=int, default=None, help="Listen port (default: http_port).")
@pass_ctx
def serve(ctx: Context, host: str | None, port: int | None) -> None:
    """Run the web front end (HTTP API, admin page, mailbox view)."""
    settings = ctx.settings
    setup_logging(settings, "herald.log")
    open_database(settings).dispose()
    _serve(settings, host, port)


def seed_demo(settings: Settings) -> dict[str, str] | None:
    """Seed the demo project unless it exists; returns the new users' tokens (also saved to data_dir)."""
    from herald.notify.dispatch import DispatchPolicy

    database = open_database(settings)
    try:
        with database.session() as session:
            if session.scalar(select(Project.id).where(Project.name == DEMO_PROJECT)):
                return None
            result = load_document(session, DEMO, on_changeset=record_owed(DispatchPolicy(settings)))
    finally:
        database.dispose()
    tokens: dict[str, str] = result["tokens"]
    path = settings.data_dir / "demo-tokens.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(tokens, fh, indent=2)
    return tokens


def _start_supervisor(ctx: Context) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "herald"]
    if ctx.config_path:
        args += ["--config", ctx.config_path]
    # --supervised: the supervisor stops itself if this process dies without passing SIGTERM on.
    return subprocess.Popen([*args, "workers", "--supervised"])


@click.command("up")
@click.option("--demo", is_flag=True, help="Seed a sample project with users and a bug tracker.")
@click.option("--host", default=None, help="Listen address (default: http_host).")
@click.option("--port", type=int, default=None, help="Listen port (default: http_port).")
@pass_ctx
def up(ctx: Context, demo: bool, host: str | None, port: int | None) -> None:
    """Run everything on this machine: the web front end, the worker supervisor, the embedded defaults."""
    settings = ctx.settings
    setup_logging(settings, "herald.log")
    open_database(settings).dispose()
    if demo:
        tokens = seed_demo(settings)
        if tokens:
            saved = settings.data_dir / "demo-tokens.json"
            click.echo(f"demo: seeded project {DEMO_PROJECT!r}; user tokens in {saved}")
    supervisor = _start_supervisor(ctx)
    mail = (
        f"SMTP {settings.smtp_host}:{settings.smtp_port}"
        if settings.smtp_host
        else (f"built-in mailbox {settings.mailbox_dir} (herald mailbox list)")
    )
    click.echo(
        f"herald up: http://{host or settings.http_host}:{port or settings.http_port}  "
        f"queue={settings.queue_backend}  async_emails={settings.async_emails}  "
        f"workers={settings.nb_backend_workers}  mail={mail}\n"
        f"admin token: {settings.data_dir / 'admin_token'}"
    )
    try:
        _serve(settings, host, port)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=settings.worker_grace_seconds + 5)
        except subprocess.TimeoutExpired:
            supervisor.kill()


COMMANDS = [serve, up]
