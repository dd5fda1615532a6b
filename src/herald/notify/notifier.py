"""The notifier's entry point, shared by inline mode and the backend workers: changeset id in, one ready
message per recipient out. Nothing is sent here; sending and the delivery ledger belong to ``herald.delivery``
and ``herald.outbox``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from sqlalchemy.orm import Session

from herald.config import Settings
from herald.notify.context import ChangeContext, load_context
from herald.notify.message import MailContext, MessageBuilder, UnsubscribeLinks, mail_domain
from herald.notify.recipients import Recipient, recipients_in
from herald.notify.render import ChangesetRenderer
from herald.notify.rules import Reason
from herald.notify.wire import Wire, WireBuilder

__all__ = ["NotificationPlan", "Outgoing", "PreparedChange", "plan_notification", "prepare_change"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """One message to send, with what the delivery ledger records about it."""

    address: str
    user_id: int | None
    reason: Reason
    message: EmailMessage
    message_id: str


@dataclass(frozen=True)
class NotificationPlan:
    """Every message a changeset owes, and how much rendering it took."""

    changeset_id: int
    artifact_id: int
    tracker_id: int
    project_id: int
    outgoing: tuple[Outgoing, ...]
    renderings: int  # distinct renderings built (shared between recipients)

    @property
    def recipients(self) -> int:
        """How many messages the plan holds (one per recipient)."""
        return len(self.outgoing)


def _mail_context(ctx: ChangeContext, settings: Settings, author_name: str) -> MailContext:
    return MailContext(
        domain=mail_domain(settings),
        base_url=settings.base_url,
        from_name=settings.mail_from_name,
        changeset_id=ctx.changeset.id,
        artifact_id=ctx.artifact.id,
        tracker_id=ctx.tracker.id,
        tracker_name=ctx.tracker.name,
        project_name=ctx.project.name,
        author_name=author_name,
        created_at=ctx.created_at,
    )


def _parts(renderer: ChangesetRenderer, mc: MailContext, recipient: Recipient, secret: str) -> dict[str, Any]:
    """What a message builder needs for ``recipient``: its rendering, personalized, and its links."""
    rendering = renderer.render(recipient)
    links = None
    if recipient.user is not None:
        links = UnsubscribeLinks.make(secret, recipient.user.id, mc)
    text, html = rendering.personalize(links.url if links else None)
    return {
        "address": recipient.address,
        "reason": recipient.reason,
        "subject": rendering.subject,
        "text": text,
        "html": html,
        "to_name": recipient.user.real_name if recipient.user is not None else "",
        "unsubscribe": links,
    }


def _outgoing(
    renderer: ChangesetRenderer, builder: MessageBuilder, recipient: Recipient, secret: str
) -> Outgoing:
    message = builder.build(**_parts(renderer, builder.mc, recipient, secret))
    return Outgoing(
        address=recipient.address,
        user_id=recipient.user_id,
        reason=recipient.reason,
        message=message,
        message_id=str(message["Message-ID"]),
    )


def plan_notification(
    session: Session, settings: Settings, changeset_id: int, secret: str
) -> NotificationPlan | None:
    """Recipients, renderings and messages for ``changeset_id``; None if the changeset no longer exists.

    ``secret`` signs the unsubscribe links (``settings.secret_key`` once it exists). The same changeset
    gives the same recipients, Message-IDs and bodies every time, so a retried job resends identical mail.
    """
    if not secret:
        # Checked up front: otherwise only changesets with a registered recipient would fail.
        raise ValueError("plan_notification needs the secret that signs unsubscribe links")
    ctx = load_context(session, changeset_id)
    if ctx is None:
        return None
    recipients = recipients_in(ctx)
    renderer = ChangesetRenderer(ctx, settings.base_url)
    builder = MessageBuilder(_mail_context(ctx, settings, renderer.author_name))
    outgoing = tuple(_outgoing(renderer, builder, r, secret) for r in recipients)
    log.debug(
        "planned changeset %s: %d recipients, %d renderings", changeset_id, len(outgoing), renderer.built
    )
    return NotificationPlan(
        changeset_id=ctx.changeset.id,
        artifact_id=ctx.artifact.id,
        tracker_id=ctx.tracker.id,
        project_id=ctx.project.id,
        outgoing=outgoing,
        renderings=renderer.built,
    )


class PreparedChange:
    """A changeset's recipients, worked out cheaply, and each one's message built only when asked for.

    The delivery run plans with this (who is owed a mail), locks, and then builds the wire bytes of the
    recipients still open only, a batch at a time: a retry with one recipient left renders one message,
    and a 5,000-recipient change never holds 5,000 messages at once. The objects it reads were loaded
    by :func:`~herald.notify.context.load_context` and stay usable after its session closed.
    """

    def __init__(
        self, ctx: ChangeContext, recipients: list[Recipient], settings: Settings, secret: str
    ) -> None:
        self.changeset_id = ctx.changeset.id
        self.artifact_id = ctx.artifact.id
        self.project_id = ctx.project.id
        self.recipients = recipients
        self._renderer = ChangesetRenderer(ctx, settings.base_url)
        self._mc = _mail_context(ctx, settings, self._renderer.author_name)
        self._builder: WireBuilder | None = None
        self._secret = secret

    @property
    def renderings(self) -> int:
        """Distinct renderings built so far (shared between recipients with the same view)."""
        return self._renderer.built

    def wire(self, recipient: Recipient, *, delayed: str | None = None) -> Wire:
        """The message for ``recipient`` as SMTP DATA bytes (identical on every retry but for
        ``delayed``, which adds ``X-Herald-Delayed``)."""
        if self._builder is None:
            self._builder = WireBuilder(self._mc)
        return self._builder.build(
            **_parts(self._renderer, self._mc, recipient, self._secret), delayed=delayed
        )


def prepare_change(
    session: Session, settings: Settings, changeset_id: int, secret: str
) -> PreparedChange | None:
    """Load ``changeset_id`` and work out its recipients; None if the changeset no longer exists."""
    if not secret:
        raise ValueError("prepare_change needs the secret that signs unsubscribe links")
    ctx = load_context(session, changeset_id)
    if ctx is None:
        return None
    return PreparedChange(ctx, recipients_in(ctx), settings, secret)
