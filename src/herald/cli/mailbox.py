"""``herald mailbox``: read the built-in mailbox (where mail goes when no smtp_host is set)."""

from __future__ import annotations

import sys
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from herald.cli.main import RET_ERROR, Context, echo_json, fail, pass_ctx
from herald.mail import MailboxTransport
from herald.mail.mailbox import AmbiguousKey, read_bytes, resolve_key

#: How many matching keys an ambiguous prefix lists.
_SHOWN_MATCHES = 10
#: Output to a pipe or a file has no width to respect: rows as long as they need (rich sizes to content).
_PIPE_WIDTH = 10_000


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
    """Newest messages first, each with its whole key (``show`` also takes a unique start of one)."""
    items = _box(ctx).list_messages(limit=limit, recipient=recipient)
    if as_json:
        echo_json([m.as_dict() for m in items])
        return
    # The key is what one copies into ``show``: never cut, never wrapped, whatever the terminal's width;
    # the other columns wrap instead. A pipe (which rich takes for 80 columns) gets one line per message.
    key_width = max((len(m.key) for m in items), default=3)
    table = Table(show_lines=False)
    table.add_column("key", no_wrap=True, min_width=key_width, overflow="ignore")
    table.add_column("date", min_width=10, overflow="fold")
    table.add_column("to", min_width=12, overflow="fold")
    table.add_column("subject", min_width=12, overflow="fold")
    for m in items:
        # escape: a subject such as "[bug #1] ..." is text, not rich markup
        table.add_row(m.key, m.date.strftime("%Y-%m-%d %H:%M:%S"), escape(m.recipient), escape(m.subject))
    console = Console()
    if not console.is_terminal:
        console = Console(width=_PIPE_WIDTH)
    console.print(table)


@mailbox.command("show")
@click.argument("key")
@click.option("--decoded", is_flag=True, help="Readable: decoded headers and the text part.")
@pass_ctx
def show(ctx: Context, key: str, decoded: bool) -> None:
    """Print message KEY (or the one message whose key starts with KEY) exactly as stored.

    The bytes are the ones delivered, envelope lines first; --decoded prints the headers decoded and the
    text part for reading, and says which other parts there are.
    """
    box = _box(ctx)
    try:
        full_key = resolve_key(box, key)
        data = read_bytes(box, full_key)
    except ValueError:
        fail(f"malformed message key {key!r}")
    except AmbiguousKey as exc:
        shown = "\n  ".join(exc.matches[:_SHOWN_MATCHES])
        more = len(exc.matches) - _SHOWN_MATCHES
        tail = f"\n  … and {more} more" if more > 0 else ""
        fail(f"{len(exc.matches)} messages start with {key!r}; give more of the key:\n  {shown}{tail}")
    except KeyError:
        fail(f"no message key starts with {key!r} (herald mailbox list shows the keys)")
    if not decoded:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)  # bytes as delivered: no re-encoding of headers or body
        sys.stdout.buffer.flush()
        return
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    click.echo(decoded_text(message))


def decoded_text(message: EmailMessage) -> str:
    """Headers decoded, a blank line, the text part, then a note for each part not shown."""
    lines = [f"{name}: {value}" for name, value in message.items()]
    lines.append("")
    body = message.get_body(preferencelist=("plain",))
    if body is not None:
        lines.append(str(body.get_content()).rstrip("\n"))
    notes = []
    for part in message.walk():
        if part is body or part.is_multipart():
            continue
        kind = part.get_content_type()
        size = len(part.get_payload(decode=True) or b"")
        filename = part.get_filename()
        if filename:
            notes.append(f"[attachment {filename!r}: {kind}, {size} bytes]")
        elif kind == "text/html":
            notes.append(f"[HTML part: {size} bytes, not shown; the admin console's mailbox renders it]")
        else:
            notes.append(f"[{kind} part: {size} bytes, not shown]")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


@mailbox.command("clear")
@click.confirmation_option(prompt="Delete every message in the built-in mailbox?")
@pass_ctx
def clear(ctx: Context) -> None:
    """Delete every stored message."""
    click.echo(f"deleted {_box(ctx).clear()} message(s)")


COMMANDS = [mailbox]
