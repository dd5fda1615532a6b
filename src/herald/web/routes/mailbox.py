"""The built-in mailbox over the API: what herald 'sent' when no SMTP server is configured."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from herald.mail import MailboxTransport
from herald.web.auth import Admin
from herald.web.routes.common import RuntimeDep

router = APIRouter(prefix="/api/mailbox", tags=["mailbox"])


def _mailbox(runtime: Any) -> MailboxTransport:
    if runtime.settings.smtp_host:
        raise HTTPException(404, "the built-in mailbox is off: mail goes to smtp_host")
    return MailboxTransport(runtime.settings)


def _part(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    return part.get_content() if part is not None else None


@router.get("", summary="Stored messages, newest first")
def list_mail(
    _: Admin,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    recipient: Annotated[str | None, Query(max_length=254)] = None,
) -> dict[str, Any]:
    box = _mailbox(runtime)
    items = box.list_messages(limit=limit, offset=offset, recipient=recipient)
    return {
        "total": box.count(),
        "messages": [m.as_dict() for m in items],
    }


@router.get("/{key}", summary="One stored message: its headers and text and HTML bodies")
def read_mail(key: str, _: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    box = _mailbox(runtime)
    try:
        message = box.get_message(key)
    except ValueError:
        raise HTTPException(422, "malformed message key") from None
    except KeyError:
        raise HTTPException(404, f"no message {key}") from None
    return {
        "key": key,
        "headers": [[name, str(value)] for name, value in message.items()],
        "text": _part(message, "plain"),
        "html": _part(message, "html"),
    }
