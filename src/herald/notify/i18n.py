"""The mail's words in English and French, and dates in the reader's language and time zone.

Catalogs are plain dicts: two languages and a few dozen strings do not need gettext's machinery. A key
missing from a catalog falls back to English, so a new string never breaks a French mail.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["LANGUAGES", "format_when", "translator", "zone"]

EN: dict[str, str] = {
    "created": "{author} created {item} #{id}",
    "updated": "{author} updated {item} #{id}",
    "when": "{weekday} {month} {day}, {year} at {time} ({zone})",
    "changes": "Changes",
    "comment": "Comment",
    "private_comment": "Private comment (project members only)",
    "snapshot": "Fields after this change",
    "empty": "(empty)",
    "colon": ":",
    "before": "before",
    "after": "after",
    "view": "View {item} #{id}",
    "open_link": "Open it: {url}",
    "reason.assigned": "You receive this mail because you are assigned to this {item}.",
    "reason.submitter": "You receive this mail because you submitted this {item}.",
    "reason.cc": "You receive this mail because you are in copy of this {item}.",
    "reason.mentioned": "You receive this mail because you were mentioned in a comment.",
    "reason.commented": "You receive this mail because you commented on this {item}.",
    "reason.following": "You receive this mail because you follow this {item}.",
    "reason.list": "You receive this mail because your address is on the notification list of {tracker}.",
    "unsubscribe": "Stop mails about this {item}:",
    "unsubscribe_link": "unsubscribe",
    "unsubscribe_list": "To leave this list, ask an administrator of {tracker}.",
    "weekdays": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "months": "January February March April May June July August September October November December",
}

FR: dict[str, str] = {
    "created": "{author} a créé {item} #{id}",
    "updated": "{author} a modifié {item} #{id}",
    "when": "{weekday} {day} {month} {year} à {time} ({zone})",
    "changes": "Modifications",
    "comment": "Commentaire",
    "private_comment": "Commentaire privé (membres du projet seulement)",
    "snapshot": "Champs après cette modification",
    "empty": "(vide)",
    "colon": "\u00a0:",
    "before": "avant",
    "after": "après",
    "view": "Voir {item} #{id}",
    "open_link": "Pour l'ouvrir\u00a0: {url}",
    "reason.assigned": "Vous recevez ce courriel car ce {item} vous est assigné.",
    "reason.submitter": "Vous recevez ce courriel car vous avez soumis ce {item}.",
    "reason.cc": "Vous recevez ce courriel car vous êtes en copie de ce {item}.",
    "reason.mentioned": "Vous recevez ce courriel car vous avez été mentionné dans un commentaire.",
    "reason.commented": "Vous recevez ce courriel car vous avez commenté ce {item}.",
    "reason.following": "Vous recevez ce courriel car vous suivez ce {item}.",
    "reason.list": (
        "Vous recevez ce courriel car votre adresse figure dans la liste de diffusion de {tracker}."
    ),
    "unsubscribe": "Ne plus recevoir de courriels sur ce {item}\u00a0:",
    "unsubscribe_link": "se désabonner",
    "unsubscribe_list": "Pour quitter cette liste, adressez-vous à un administrateur de {tracker}.",
    "weekdays": "lundi mardi mercredi jeudi vendredi samedi dimanche",
    "months": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
}

CATALOGS: dict[str, dict[str, str]] = {"en": EN, "fr": FR}
LANGUAGES: tuple[str, ...] = tuple(CATALOGS)


def translator(language: str) -> Callable[..., str]:
    """``t(key, **params)`` for ``language`` (unknown languages read English)."""
    catalog = CATALOGS.get(str(language), EN)

    def t(key: str, /, **params: object) -> str:
        template = catalog.get(key) or EN[key]
        # The template comes from the catalog, never from users, so format() interprets nothing they typed.
        return template.format(**params) if params else template

    return t


@lru_cache(maxsize=256)
def zone(name: str) -> tzinfo:
    """The named IANA time zone, or UTC if the name is unknown or malformed."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return UTC


def format_when(moment: datetime, language: str, timezone: str) -> str:
    """``moment`` in the reader's time zone and words, e.g. "Tuesday May 7, 2024 at 16:05 (CEST)"."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(zone(timezone))
    t = translator(language)
    return t(
        "when",
        weekday=t("weekdays").split()[local.weekday()],
        month=t("months").split()[local.month - 1],
        day=local.day,
        year=local.year,
        time=local.strftime("%H:%M"),
        zone=local.tzname() or timezone,
    )
