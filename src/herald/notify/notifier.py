"""The notifier's entry point, shared by inline mode and the backend workers: changeset id in, one ready
message per recipient out. Nothing is sent here; sending and the delivery ledger belong to ``herald.worker``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage

from sqlalchemy.orm import Session

from herald.config import Settings
from herald.notify.context import ChangeContext, load_context
from herald.notify.message import MailContext, MessageBuilder, UnsubscribeLinks, mail_domain
from herald.notify.recipients import Recipient, recipients_in
from herald.notify.render import ChangesetRenderer
from herald.notify.rules import Reason

__all__ = ["NotificationPlan", "Outgoing", "plan_notification"]

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


def _outgoing(
    renderer: ChangesetRenderer, builder: MessageBuilder, recipient: Recipient, secret: str
) -> Outgoing:
    rendering = renderer.render(recipient)
    links = None
    if recipient.user is not None:
        links = UnsubscribeLinks.make(secret, recipient.user.id, builder.mc)
    text, html = rendering.personalize(links.url if links else None)
    message = builder.build(
        address=recipient.address,
        reason=recipient.reason,
        subject=rendering.subject,
        text=text,
        html=html,
        to_name=recipient.user.real_name if recipient.user is not None else "",
        unsubscribe=links,
    )
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
