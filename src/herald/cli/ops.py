"""``herald check`` (Nagios-style verdict) and ``herald doctor`` (installation sanity)."""

from __future__ import annotations

import sys

import click

from herald.cli.main import Context, echo_json, pass_ctx
from herald.cli.target import describe
from herald.ops.check import run_check
from herald.queue import make_queue
from herald.tracker.db import Database


@click.command("check")
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (the document of GET /api/check)."
)
@pass_ctx
def check(ctx: Context, as_json: bool) -> None:
    """Are notifications flowing? Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios plugin style).

    The first line is the verdict (with Nagios perfdata after '|'); then each finding with its next step
    and its section of docs/operations.md; then which configuration and queue were looked at.
    """
    settings = ctx.settings
    target = describe(ctx)
    db = Database(settings.database_url)
    queue = make_queue(settings)
    try:
        report = run_check(settings, db, queue)
    finally:
        queue.close()
        db.dispose()
    if as_json:
        document = report.as_dict()
        document["target"] = target.as_dict()
        echo_json(document)
        target.echo(err=True)
    else:
        # Nagios reads the first line: the verdict comes first, what it is about after the findings.
        for line in report.text_lines():
            click.echo(line)
        target.echo()
    sys.exit(int(report.status))


@click.command("doctor")
@pass_ctx
def doctor(ctx: Context) -> None:
    """Check the configuration, database, queue (Redis hardening), mail server and directories."""
    from herald.ops.doctor import diagnose  # imports the migrations: not on herald check's path

    settings = ctx.settings
    describe(ctx).echo()
    report = diagnose(settings)
    for line in report.ok:
        click.echo(f"ok       {line}")
    for line in report.warnings:
        click.echo(f"WARNING  {line}")
    for line in report.errors:
        click.echo(f"ERROR    {line}")
    sys.exit(report.exit_code)


COMMANDS = [check, doctor]
