"""``herald test-send ADDRESS``: one mail through the whole pipeline, each hop timed (see
:mod:`herald.ops.testsend` for what the test mail is and how it travels)."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import click

from herald.cli.main import RET_ERROR, RET_OK, Context, fail, pass_ctx
from herald.cli.target import describe
from herald.config import DispatchMode, Settings
from herald.ops.workers import expected_workers, processes
from herald.queue import QueueError, make_queue

#: The mail did not go out (or the test could not start): the line ``stopped at …`` says where and why.
RET_NOT_SENT = RET_ERROR


def _preflight(settings: Settings, db: object) -> str | None:
    """Why the async path cannot deliver right now (queue down, no worker), before anything is written."""
    try:
        with make_queue(settings) as queue:
            queue.stats()
    except QueueError as exc:
        return f"queue: unreachable ({exc}); nothing was sent and nothing was written"
    procs = processes(db)  # type: ignore[arg-type]
    live = [p for p in procs if p.kind == "worker" and p.alive]
    if not live:
        return (
            f"worker: no backend worker is alive (0 of {expected_workers(settings, procs)}); start "
            "`herald up` or `herald workers` (nothing was written: no test mail will turn up later)"
        )
    return None


@click.command("test-send")
@click.argument("address")
@click.option(
    "--timeout", type=click.FloatRange(1, 3600), default=30.0, show_default=True, help="Seconds to wait."
)
@pass_ctx
def test_send(ctx: Context, address: str, timeout: float) -> None:
    """Send one test mail to ADDRESS through the path notifications take: a change committed with its
    outbox row, the queue, a live worker, the SMTP relay (or the inline delivery when async_emails is off
    everywhere). Prints each hop with its time, or where it stopped and why; exit 0 when the relay
    accepted the mail, 1 otherwise."""
    from herald.cli.data import open_database
    from herald.ops.testsend import TestSendError, follow, prepare
    from herald.outbox import records
    from herald.tracker.validate import address_problem
    from herald.web.dispatcher import build_dispatcher

    settings = ctx.settings
    describe(ctx).echo()
    problem = address_problem(address)
    if problem is not None:
        fail(f"test-send: ADDRESS {problem}")
    asynchronous = settings.async_emails.enabled
    if asynchronous:
        click.echo(f"path: async (async_emails = {settings.async_emails}): outbox -> queue -> worker -> smtp")
    else:
        click.echo("path: inline (async_emails = false, the path of every notification here): outbox -> smtp")
    mail = (
        f"{settings.smtp_host}:{settings.smtp_port}"
        if settings.smtp_host
        else f"built-in mailbox {settings.mailbox_dir}"
    )
    click.echo(f"relay: {mail}")
    db = open_database(settings)
    try:
        if asynchronous:
            problem = _preflight(settings, db)
            if problem is not None:
                click.echo(f"stopped at {problem}")
                sys.exit(RET_NOT_SENT)
        started = time.monotonic()
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        try:
            with db.session() as session:
                changeset_id, _project = prepare(session, address, settings.mail_domain, now)
                mode = DispatchMode.ASYNC if asynchronous else DispatchMode.INLINE
                records.record(session, changeset_id, mode, datetime.now(UTC))
        except TestSendError as exc:
            fail(str(exc))
        click.echo(
            f"  outbox  {1000 * (time.monotonic() - started):8.1f} ms  changeset {changeset_id} committed"
        )
        dispatcher = build_dispatcher(settings, db)
        try:
            dispatcher.after_commit(
                changeset_id, mode
            )  # the front end's own hand-off: push, or deliver inline
            trace = follow(
                db.read,
                changeset_id,
                address,
                started=started,
                timeout=timeout,
                asynchronous=asynchronous,
                relay_state=lambda: [
                    (p.name, not p.relay_down, p.relay.get("last_error"))
                    for p in processes(db)
                    if p.kind == "worker" and p.alive
                ],
            )
        finally:
            dispatcher.close()
    finally:
        db.dispose()
    for hop in trace.hops:
        click.echo(f"  {hop.name:<6}  {1000 * hop.seconds:8.1f} ms  {hop.detail}")
    if trace.stopped is not None:
        click.echo(f"stopped at {trace.stopped}")
        click.echo(f"the change stays owed: GET /api/changesets/{changeset_id}/notification follows it")
        sys.exit(RET_NOT_SENT)
    click.echo(f"sent to {address} in {1000 * trace.hops[-1].seconds:.1f} ms")
    sys.exit(RET_OK)


COMMANDS = [test_send]
