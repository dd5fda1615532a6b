"""``herald mailbox``: read the built-in mailbox (where mail goes when no smtp_host is set)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from herald.cli.main import RET_ERROR, Context, echo_json, fail, pass_ctx
from herald.mail import MailboxTransport


def _box(ctx: Context) -> MailboxTransport:
    if ctx.settings.smtp_host:
        fail(f"the built-in mailbox is off: mail goes to {ctx.settings.smtp_host}", RET_ERROR)
    return MailboxTransport(ctx.settings)


@click.group()
def mailbox() -> None:
    """The built-in mailbox."""


@mailbox.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--to", "recipient", default=None, help="Only messages to this address.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def list_(ctx: Context, limit: int, recipient: str | None, as_json: bool) -> None:
    """Newest messages first."""
    items = _box(ctx).list_messages(limit=limit, recipient=recipient)
    if as_json:
        echo_json([m.as_dict() for m in items])
        return
    table = Table("key", "date", "to", "subject")
    for m in items:
        # escape: a subject such as "[bug #1] ..." is text, not rich markup
        table.add_row(m.key, m.date.strftime("%Y-%m-%d %H:%M:%S"), escape(m.recipient), escape(m.subject))
    Console().print(table)


@mailbox.command("show")
@click.argument("key")
@pass_ctx
def show(ctx: Context, key: str) -> None:
    """Print one message as it was sent (headers and MIME body)."""
    try:
        message = _box(ctx).get_message(key)
    except ValueError:
        fail(f"malformed message key {key!r}")
    except KeyError:
        fail(f"no message {key!r}")
    click.echo(message.as_string())


@mailbox.command("clear")
@click.confirmation_option(prompt="Delete every message in the built-in mailbox?")
@pass_ctx
def clear(ctx: Context) -> None:
    """Delete every stored message."""
    click.echo(f"deleted {_box(ctx).clear()} message(s)")


COMMANDS = [mailbox]
