"""Unsubscribe links from mails: a confirmation page (GET) and the action (POST), which is also the
RFC 8058 One-Click endpoint named by ``List-Unsubscribe-Post``. The signed token is the only credential:
mail clients post without cookies or tokens of the user."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from herald.notify.unsubscribe import verify_unsubscribe_token
from herald.tracker.models import Artifact, ArtifactSubscription, SubscriptionState, User, utcnow
from herald.web.pages import page
from herald.web.routes.common import RuntimeDep

router = APIRouter(tags=["unsubscribe"], include_in_schema=True)
log = logging.getLogger("herald.web")

Token = Annotated[str, Path(max_length=100)]


def _what(artifact: Artifact | None) -> str:
    if artifact is None:
        return "this item"
    return f"{artifact.tracker.item_name} #{artifact.id}"


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe confirmation page")
def confirm(token: Token, runtime: RuntimeDep) -> HTMLResponse:
    ids = verify_unsubscribe_token(runtime.settings.secret_key or "", token)
    if ids is None:
        return page("unsubscribe.html", status_code=404, invalid=True)
    with runtime.db.read() as s:
        return page("unsubscribe.html", what=_what(s.get(Artifact, ids[1])))


@router.post(
    "/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe (also RFC 8058 One-Click)"
)
def unsubscribe(token: Token, runtime: RuntimeDep) -> HTMLResponse:
    ids = verify_unsubscribe_token(runtime.settings.secret_key or "", token)
    if ids is None:
        return page("unsubscribe.html", status_code=404, invalid=True)
    user_id, artifact_id = ids
    with runtime.db.session() as s:
        artifact = s.get(Artifact, artifact_id)
        if artifact is not None and s.get(User, user_id) is not None:
            # No read check here: someone who lost access gets no mail anyway, and the link must work.
            sub = s.get(ArtifactSubscription, (artifact_id, user_id))
            if sub is None:
                s.add(
                    ArtifactSubscription(
                        artifact_id=artifact_id, user_id=user_id, state=SubscriptionState.UNSUBSCRIBED
                    )
                )
            else:
                sub.state, sub.updated_at = SubscriptionState.UNSUBSCRIBED, utcnow()
            log.info("unsubscribed user_id=%s artifact_id=%s by link", user_id, artifact_id)
        return page("unsubscribe.html", done=True, what=_what(artifact))
