"""Per-recipient mail bodies, built once per distinct view of a changeset.

What a recipient sees depends only on a few things (:class:`RenderKey`): language, time zone, which of the
fields in play they may read, whether they may read the comment, text or HTML, the reason, and whether they
get an unsubscribe link. Recipients sharing a key share one rendering; the only per-recipient part, the
unsubscribe link, is a marker swapped in by :meth:`Rendering.personalize`. The marker holds control
characters that :mod:`herald.notify.sanitize` removes from every user string, so no user text can forge it.
"""

from __future__ import annotations

import html as html_lib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from herald.notify import sanitize
from herald.notify.context import ChangeContext, user_ids_in
from herald.notify.i18n import format_when, translator
from herald.notify.recipients import Recipient
from herald.notify.rules import Reason
from herald.tracker.models import Field, FieldType, MailFormat

__all__ = ["ChangesetRenderer", "RenderKey", "Rendering", "artifact_url"]

TEMPLATES = Path(__file__).with_name("templates")
UNSUBSCRIBE_MARK = "\x1aherald-unsubscribe-url\x1a"
_LINE_MAX = 1_000  # one-line values in a body; header-bound values are cut much shorter


@cache
def _environments() -> tuple[Environment, Environment]:
    """(html, text): HTML escapes every value; text must not, or "<" would reach readers as "&lt;"."""
    common: dict[str, Any] = {
        "loader": FileSystemLoader(TEMPLATES),
        "undefined": StrictUndefined,
        "trim_blocks": True,
        "lstrip_blocks": True,
        "keep_trailing_newline": True,
    }
    return Environment(autoescape=True, **common), Environment(autoescape=False, **common)


@dataclass(frozen=True)
class RenderKey:
    """Everything that makes two recipients' mails differ, apart from the unsubscribe link."""

    language: str
    timezone: str
    field_ids: frozenset[int]
    comment: bool
    mail_format: MailFormat
    reason: Reason
    can_unsubscribe: bool


@dataclass(frozen=True)
class Rendering:
    """A subject and bodies shared by every recipient with the same :class:`RenderKey`."""

    subject: str
    text: str
    html: str | None

    def personalize(self, unsubscribe_url: str | None) -> tuple[str, str | None]:
        """(text, html) with this recipient's unsubscribe link in place of the marker."""
        url = unsubscribe_url or ""
        text = self.text.replace(UNSUBSCRIBE_MARK, url)
        html = None if self.html is None else self.html.replace(UNSUBSCRIBE_MARK, html_lib.escape(url))
        return text, html


def artifact_url(base_url: str, artifact_id: int) -> str:
    """The public link to an artifact."""
    return f"{base_url.rstrip('/')}/artifacts/{artifact_id}"


class ChangesetRenderer:
    """Renders one changeset for many recipients, caching by :class:`RenderKey`."""

    def __init__(self, ctx: ChangeContext, base_url: str) -> None:
        self.ctx = ctx
        self.url = artifact_url(base_url, ctx.artifact.id)
        self._cache: dict[RenderKey, Rendering] = {}
        # Display forms are computed once per changeset; ``None`` means empty.
        self._now = {fid: self._display(ctx.fields[fid], v) for fid, v in ctx.values.items()}
        self._changes = [
            (
                c.field_id,
                self._display(ctx.fields[c.field_id], c.old_value),
                self._display(ctx.fields[c.field_id], c.new_value),
            )
            for c in ctx.changes
        ]
        # Only fields that show up in the mail matter to the key: two readers differing on a field that is
        # empty and unchanged get the same mail.
        self._in_play = (
            frozenset(fid for fid, v in self._now.items() if v is not None) | ctx.changed_field_ids
        )
        self._comment = sanitize.body_text(ctx.changeset.comment) if ctx.has_comment else ""
        author = ctx.author
        self.author_name = _person_name(author) if author else f"#{ctx.changeset.author_id}"
        self.item = sanitize.header_text(ctx.tracker.item_name, 32)
        project = ctx.project
        self.tracker_label = sanitize.header_text(f"{project.label or project.name} / {ctx.tracker.name}")

    @property
    def built(self) -> int:
        """How many distinct renderings were built so far."""
        return len(self._cache)

    def key_for(self, recipient: Recipient) -> RenderKey:
        """The cache key of what ``recipient`` sees."""
        return RenderKey(
            language=recipient.language,
            timezone=recipient.timezone,
            field_ids=recipient.access.field_ids & self._in_play,
            comment=recipient.access.comment,
            mail_format=recipient.mail_format,
            reason=recipient.reason,
            can_unsubscribe=recipient.user is not None,
        )

    def render(self, recipient: Recipient) -> Rendering:
        """The (shared) rendering for ``recipient``."""
        key = self.key_for(recipient)
        rendering = self._cache.get(key)
        if rendering is None:
            rendering = self._cache[key] = self._build(key)
        return rendering

    def subject_for(self, key: RenderKey) -> str:
        """``[<item> #<id>] <title>``, without the title if the reader may not read it."""
        ctx = self.ctx
        prefix = f"[{self.item} #{ctx.artifact.id}]"
        title_id = ctx.tracker.title_field_id
        title = self._now.get(title_id) if title_id in key.field_ids else None
        return sanitize.subject(f"{prefix} {title}" if title else prefix)

    # --- building -------------------------------------------------------------------------------------

    def _build(self, key: RenderKey) -> Rendering:
        view = self._view(key)
        html_env, text_env = _environments()
        text = text_env.get_template("mail.txt.j2").render(view)
        html = None
        if key.mail_format is MailFormat.HTML:
            html = html_env.get_template("mail.html.j2").render(view)
        return Rendering(subject=view["subject"], text=text, html=html)

    def _view(self, key: RenderKey) -> dict[str, Any]:
        ctx, t = self.ctx, translator(key.language)
        fields = ctx.fields
        empty = t("empty")
        changes = [
            {
                "label": sanitize.header_text(fields[fid].label),
                "old": old if old is not None else empty,
                "new": new if new is not None else empty,
                "multiline": fields[fid].type is FieldType.TEXT,
            }
            for fid, old, new in self._changes
            if fid in key.field_ids
        ]
        snapshot = [
            {
                "label": sanitize.header_text(field.label),
                "value": self._now[fid],
                "multiline": field.type is FieldType.TEXT,
            }
            for fid, field in fields.items()
            if fid in key.field_ids and self._now.get(fid) is not None
        ]
        headline_key = "created" if ctx.changeset.is_creation else "updated"
        return {
            "t": t,
            "lang": key.language,
            "subject": self.subject_for(key),
            "headline": t(headline_key, author=self.author_name, item=self.item, id=ctx.artifact.id),
            "when": format_when(ctx.created_at, key.language, key.timezone),
            "comment": self._comment if key.comment else "",
            "comment_private": ctx.changeset.comment_private,
            # A creation's "changes" would repeat the snapshot line for line.
            "changes": [] if ctx.changeset.is_creation else changes,
            "snapshot": snapshot,
            "url": self.url,
            "view_label": t("view", item=self.item, id=ctx.artifact.id),
            "reason_text": t(f"reason.{key.reason}", item=self.item, tracker=self.tracker_label),
            "unsubscribe_url": UNSUBSCRIBE_MARK if key.can_unsubscribe else "",
            "unsubscribe_text": (
                t("unsubscribe", item=self.item)
                if key.can_unsubscribe
                else t("unsubscribe_list", tracker=self.tracker_label)
            ),
        }

    def _display(self, field: Field, value: Any) -> str | None:
        """A value as readers see it, or None when empty. User ids become names."""
        if value is None or value == "" or value == []:
            return None
        if field.type in (FieldType.USER, FieldType.USERS):
            names = []
            for uid in user_ids_in(value):
                user = self.ctx.users.get(uid)
                names.append(_person_name(user) if user else f"#{uid}")
            return ", ".join(names) or None
        if field.type is FieldType.TEXT:
            return sanitize.body_text(value) or None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        return sanitize.header_text(value, _LINE_MAX) or None


def _person_name(user: Any) -> str:
    return sanitize.header_text(user.real_name or user.username, sanitize.DISPLAY_NAME_MAX)
