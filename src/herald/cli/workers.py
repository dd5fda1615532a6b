"""The worker pool and the queue: ``herald worker``, ``workers``, ``relay`` and ``queue``."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from herald.cli.data import open_database
from herald.cli.logs import setup_logging
from herald.cli.main import RET_ERROR, RET_OK, Context, echo_json, fail, pass_ctx
from herald.cli.target import describe
from herald.queue import Queue, QueueError, QueueUnavailable, make_queue

#: The queue's server could not be reached (``herald queue ...``); try again later.
RET_QUEUE_UNAVAILABLE = 4


def _herald_command(ctx: Context) -> list[str]:
    """How to start herald again with the same configuration (for the supervisor's children)."""
    args = [sys.executable, "-m", "herald"]
    if ctx.config_path:
        args += ["--config", ctx.config_path]
    return args


@click.command("worker")
@click.option("--id", "worker_id", type=click.IntRange(1, 1000), required=True, help="Worker number.")
@click.option("--supervised", is_flag=True, hidden=True, help="Exit when the parent process goes away.")
@pass_ctx
def worker(ctx: Context, worker_id: int, supervised: bool) -> None:
    """Run one backend worker: claim jobs, deliver notifications, until SIGTERM."""
    from herald.worker import Worker

    settings = ctx.settings
    setup_logging(settings, "worker.log")
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see what a stuck worker waits on.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    process = Worker(settings, worker_id, parent_pid=os.getppid() if supervised else None)
    process.install_signal_handlers()
    sys.exit(process.run())


@click.command("workers")
@click.option("--supervised", is_flag=True, hidden=True, help="Stop when the parent process goes away.")
@click.option("--up-restarts", type=click.IntRange(0), default=0, hidden=True, help="Set by herald up.")
@pass_ctx
def workers(ctx: Context, supervised: bool, up_restarts: int) -> None:
    """Run the worker supervisor: nb_backend_workers workers, the outbox relay, crash recovery."""
    from herald.worker import Supervisor

    settings = ctx.settings
    setup_logging(settings, "worker.log")
    open_database(settings).dispose()  # the schema is at head before any worker starts
    parent = os.getppid() if supervised else None
    supervisor = Supervisor(settings, _herald_command(ctx), parent_pid=parent, up_restarts=up_restarts)
    supervisor.install_signal_handlers()
    sys.exit(supervisor.run())


@click.command("relay")
@pass_ctx
def relay(ctx: Context) -> None:
    """Run only the outbox relay and the lease reclaimer (when systemd manages the workers)."""
    from herald.worker import Supervisor

    settings = ctx.settings
    setup_logging(settings, "worker.log")
    open_database(settings).dispose()
    supervisor = Supervisor(settings, _herald_command(ctx), spawn=False)
    supervisor.install_signal_handlers()
    sys.exit(supervisor.run())


# --- herald queue ----------------------------------------------------------------------------------------


@contextmanager
def _queue(ctx: Context, *, quiet_stdout: bool = False) -> Iterator[Queue]:
    """The configured queue, after saying which one it is (on stderr when stdout carries JSON)."""
    describe(ctx).echo(err=quiet_stdout)
    try:
        with make_queue(ctx.settings) as q:
            yield q
    except QueueUnavailable as exc:
        fail(f"queue unavailable: {exc}", RET_QUEUE_UNAVAILABLE)
    except QueueError as exc:
        fail(f"queue error: {exc}", RET_ERROR)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group("queue")
def queue() -> None:
    """Inspect and repair the job queue."""


@queue.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def stats(ctx: Context, as_json: bool) -> None:
    """Ready, in-flight, delayed and dead jobs, and the age of the oldest live one."""
    with _queue(ctx, quiet_stdout=as_json) as q:
        s = q.stats()
    values: dict[str, Any] = {
        "backend": ctx.settings.queue_backend,
        "target": describe(ctx).as_dict(),
        "depth": s.depth,
        "in_flight": s.in_flight,
        "delayed": s.delayed,
        "dead": s.dead,
        "oldest_age_seconds": round(s.oldest_age_seconds, 3),
    }
    if as_json:
        echo_json(values)
        return
    table = Table("backend", "ready", "in flight", "delayed", "dead", "oldest age")
    table.add_row(
        values["backend"],
        str(s.depth),
        str(s.in_flight),
        str(s.delayed),
        str(s.dead),
        f"{s.oldest_age_seconds:.1f}s",
    )
    Console().print(table)


@queue.command("dead")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def dead(ctx: Context, limit: int, as_json: bool) -> None:
    """Dead letters, oldest first, with why each died."""
    with _queue(ctx, quiet_stdout=as_json) as q:
        letters = q.dead_letters(limit)
    if as_json:
        echo_json(
            [
                {
                    "job_id": d.job_id,
                    "changeset_id": d.changeset_id,
                    "reason": d.reason,
                    "attempts": d.attempts,
                    "died_at": datetime.fromtimestamp(d.died_at, UTC).isoformat(),
                    "raw": d.raw,
                }
                for d in letters
            ]
        )
        return
    table = Table("changeset", "attempts", "died at (UTC)", "reason")
    table.add_column("job id", no_wrap=True, min_width=32)  # whole, to copy into ``herald queue retry``
    for d in letters:
        changeset = "-" if d.changeset_id is None else str(d.changeset_id)
        table.add_row(changeset, str(d.attempts), _when(d.died_at), d.reason, d.job_id)
    Console().print(table)


@queue.command("retry")
@click.argument("job_id", required=False)
@click.option("--all", "all_", is_flag=True, help="Requeue every dead letter.")
@pass_ctx
def retry(ctx: Context, job_id: str | None, all_: bool) -> None:
    """Put dead letter JOB_ID (or --all of them) back in line with a fresh attempt count."""
    if (job_id is None) == (not all_):
        raise click.UsageError("give a JOB_ID or --all (not both)")
    with _queue(ctx) as q:
        count = q.requeue_dead(None if all_ else job_id)
    if job_id is not None and count == 0:
        fail(f"no dead letter {job_id!r} that can be requeued (malformed ones can only be purged)")
    click.echo(f"requeued {count} job(s)")


@queue.command("purge")
@click.confirmation_option(prompt="Delete every dead letter?")
@pass_ctx
def purge(ctx: Context) -> None:
    """Delete every dead letter."""
    with _queue(ctx) as q:
        count = q.purge_dead()
    click.echo(f"purged {count} dead letter(s)")
    sys.exit(RET_OK)


COMMANDS = [worker, workers, relay, queue]
