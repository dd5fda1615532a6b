"""The job every peer runs: what a Python team would write with smtplib and email.message.

Given a change id, build one EmailMessage per recipient (3 per change, about 6 KB on the wire: a subject,
a text part and an HTML alternative, close to herald's average mail) and send them over one SMTP
connection opened for the job (smtplib's idiom: connect, send, quit). The enqueue time and the change id
travel in headers so the recording relay can compute latency and count duplicates.

Stdlib only: imported by the peers' workers and driver inside bench/.venv-peers.
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

RECIPIENTS = ("bob@example.org", "carol@example.org", "dave@example.org")
SENDER = "tracker@example.org"

_LINES = [
    "Status changed from Open to Fixed by Alice (alice@example.org).",
    "The fix is in the release branch; please verify it on your side and close the bug if it holds.",
    "Reproduction steps, expected and actual results are kept in the description below for reference.",
]


def _text(change_id: int, rcpt: str) -> str:
    body = [
        f"Hello {rcpt.split('@')[0].title()},",
        "",
        f"Bug #{change_id % 1000} was changed (change {change_id}).",
    ]
    for i in range(19):
        body.append(f"  {i + 1:2d}. {_LINES[i % len(_LINES)]}")
    body += ["", "-- ", "You receive this mail because you are assigned to or in cc of this bug."]
    return "\n".join(body) + "\n"


def _html(change_id: int, rcpt: str) -> str:
    rows = "".join(
        f'<tr><td style="padding:2px 8px;color:#555">{i + 1}</td><td style="padding:2px 8px">'
        f"{_LINES[i % len(_LINES)]}</td></tr>\n"
        for i in range(19)
    )
    return (
        '<!doctype html><html><body style="font-family:sans-serif">\n'
        f"<p>Hello {rcpt.split('@')[0].title()},</p>\n"
        f"<p>Bug <b>#{change_id % 1000}</b> was changed (change {change_id}).</p>\n"
        f'<table style="border-collapse:collapse">\n{rows}</table>\n'
        '<p style="color:#888;font-size:small">You receive this mail because you are assigned to or in cc '
        "of this bug.</p>\n</body></html>\n"
    )


def build_messages(change_id: int, enqueued: float) -> list[EmailMessage]:
    """One message per recipient of the change."""
    messages = []
    for rcpt in RECIPIENTS:
        msg = EmailMessage()
        msg["Subject"] = f"[bench bugs #{change_id % 1000}] Bug {change_id % 1000}: status Open -> Fixed"
        msg["From"] = f"Alice (via tracker) <{SENDER}>"
        msg["To"] = rcpt
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain="example.org")
        msg["X-Bench-Change"] = str(change_id)
        msg["X-Bench-Enqueued"] = repr(enqueued)
        msg.set_content(_text(change_id, rcpt))
        msg.add_alternative(_html(change_id, rcpt), subtype="html")
        messages.append(msg)
    return messages


def send_change(change_id: int, enqueued: float) -> None:
    """The job: build the change's 3 messages and send them over one connection to the relay."""
    messages = build_messages(change_id, enqueued)
    port = int(os.environ["BENCH_SMTP_PORT"])
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        for msg in messages:
            smtp.send_message(msg)


if __name__ == "__main__":  # the payload size, for the docs
    sizes = [len(m.as_bytes()) for m in build_messages(123, 0.0)]
    print(sizes)
