"""``herald serve`` (the web front end) and ``herald up`` (the whole system on this machine)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import click
import uvicorn
from sqlalchemy import select

from herald.cli.data import open_database, record_owed
from herald.cli.listen import ListenError, bind, follow_address
from herald.cli.logs import setup_logging
from herald.cli.main import RET_ERROR, Context, pass_ctx
from herald.cli.target import mismatches
from herald.config import Settings
from herald.tracker.demo import DEMO, DEMO_PROJECT
from herald.tracker.loader import load_document
from herald.tracker.models import Project

_PORT = click.IntRange(0, 65535)


def _listen(ctx: Context, command: str, host: str | None, port: int | None) -> tuple[Settings, socket.socket]:
    """Bind the web port (or stop with one line), and let ``base_url`` follow it unless it was set."""
    settings = ctx.settings
    host = host if host is not None else settings.http_host
    try:
        sock = bind(host, port if port is not None else settings.http_port)
    except ListenError as exc:
        click.echo(f"herald {command}: {exc}", err=True)
        sys.exit(RET_ERROR)
    if not ctx.explicit("base_url"):
        bound_port = sock.getsockname()[1]  # the real one when --port 0 let the system choose
        settings = follow_address(settings, host, bound_port, mail_domain=not ctx.explicit("mail_domain"))
    return settings, sock


def _serve(settings: Settings, sock: socket.socket) -> None:
    from herald.web import create_app

    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the same signal again so the default
    # action kills the process (exit -15). For herald a handled stop is a clean exit: absorb the re-raise.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@click.command("serve")
@click.option("--host", default=None, help="Listen address (default: http_host).")
@click.option("--port", type=_PORT, default=None, help="Listen port (default: http_port; 0: any free one).")
@pass_ctx
def serve(ctx: Context, host: str | None, port: int | None) -> None:
    """Run the web front end (HTTP API, admin page, mailbox view).

    Mail links (base_url) follow --host/--port unless base_url is set in the configuration.
    """
    settings, sock = _listen(ctx, "serve", host, port)
    setup_logging(settings, "herald.log")
    open_database(settings).dispose()
    click.echo(f"herald serve: {_url(sock)}  mail links: {settings.base_url}")
    _serve(settings, sock)


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


def _start_supervisor(ctx: Context, settings: Settings, restarts: int = 0) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "herald"]
    if ctx.config_path:
        args += ["--config", ctx.config_path]
    # Workers render the mails of async projects: they must use the base_url this process settled on.
    env = {**os.environ, "HERALD_BASE_URL": settings.base_url, "HERALD_MAIL_DOMAIN": settings.mail_domain}
    # --supervised: the supervisor stops itself if this process dies without passing SIGTERM on.
    return subprocess.Popen([*args, "workers", "--supervised", "--up-restarts", str(restarts)], env=env)


def _warn_if_smtp_unusable(settings: Settings) -> None:
    """Probe the SMTP relay in the background (a dead host may take smtp_timeout); one line if unusable."""
    import threading

    from herald.cli.upkeep import probe_smtp

    def probe() -> None:
        reason = probe_smtp(settings)
        if reason is not None:
            line = (
                f"SMTP relay {settings.smtp_host}:{settings.smtp_port} is unusable ({reason}); mail waits "
                "until it works (herald doctor, herald test-send ADDRESS)"
            )
            logging.getLogger("herald.up").warning("%s", line)
            click.echo(f"WARNING: {line}", err=True)

    threading.Thread(target=probe, name="smtp-probe", daemon=True).start()


def _workers_phrase(settings: Settings) -> str:
    """What the supervisor really runs (with async_emails = false, one recovery worker at most)."""
    from herald.worker.supervisor import workers_wanted

    wanted = workers_wanted(settings)
    if wanted and not settings.async_emails.enabled:
        return f"workers={wanted} (recovery only: async_emails = false)"
    return f"workers={wanted}"


@click.command("up")
@click.option("--demo", is_flag=True, help="Seed a sample project with users and a bug tracker.")
@click.option("--host", default=None, help="Listen address (default: http_host).")
@click.option("--port", type=_PORT, default=None, help="Listen port (default: http_port; 0: any free one).")
@pass_ctx
def up(ctx: Context, demo: bool, host: str | None, port: int | None) -> None:
    """Run everything on this machine: the web front end, the worker supervisor, the embedded defaults.

    Mail links (base_url) follow --host/--port unless base_url is set in the configuration.
    """
    settings, sock = _listen(ctx, "up", host, port)  # first: a busy port changes nothing, starts nothing
    setup_logging(settings, "herald.log")
    open_database(settings).dispose()
    if demo:
        tokens = seed_demo(settings)
        if tokens:
            saved = settings.data_dir / "demo-tokens.json"
            click.echo(f"demo: seeded project {DEMO_PROJECT!r}; user tokens in {saved}")
    from herald.cli.upkeep import SupervisorKeeper

    keeper = SupervisorKeeper(
        lambda restarts: _start_supervisor(ctx, settings, restarts), settings.worker_grace_seconds
    )
    mail = (
        f"SMTP {settings.smtp_host}:{settings.smtp_port}"
        if settings.smtp_host
        else (f"built-in mailbox {settings.mailbox_dir} (herald mailbox list)")
    )
    click.echo(
        f"herald up: {_url(sock)}  queue={settings.queue_backend}  async_emails={settings.async_emails}  "
        f"{_workers_phrase(settings)}  mail={mail}\n"
        f"mail links: {settings.base_url}\n"
        f"admin token: {settings.data_dir / 'admin_token'}"
    )
    for warning in mismatches(settings):
        click.echo(f"WARNING: {warning}")
    _warn_if_smtp_unusable(settings)
    try:
        _serve(settings, sock)
    finally:
        keeper.stop()


COMMANDS = [serve, up]
