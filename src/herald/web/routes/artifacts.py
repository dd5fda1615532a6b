"""Artifacts: created and changed with a user's own token, read filtered by that user's permissions.

The request commits the changeset and its outbox row, then hands the notification to the dispatcher:
inline delivery for projects not in ``async_emails``, a queue push (ids only) for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from herald.outbox import records
from herald.tracker import subscriptions
from herald.tracker.artifacts import NothingChanged, create_artifact, get_artifact, update_artifact
from herald.tracker.models import Changeset, User
from herald.web.answers import ArtifactRead, ArtifactSubscription, ArtifactWritten, TrackerSubscription
from herald.web.auth import AnyCaller, Caller
from herald.web.routes.common import Id, RuntimeDep
from herald.web.runtime import Runtime
from herald.web.schemas import ArtifactCreate, ArtifactUpdate, SubscriptionChange, TrackerSubscriptionChange
from herald.web.views import artifact_view

router = APIRouter(prefix="/api", tags=["artifacts"])


def _change(runtime: Runtime, caller: User, change: Callable[[Session, User], Changeset]) -> dict[str, Any]:
    """Commit ``change`` with the notification it owes (one transaction), then hand the notification on.

    The answer is the artifact, flat, as ``GET /api/artifacts/{id}`` gives it (without the history), plus
    the change this request made: ``changeset_id`` and ``notification`` (its mode and where to follow it).
    """
    with runtime.db.session() as s:
        author = s.merge(caller, load=False)
        cs = change(s, author)
        mode = runtime.dispatcher.mode_for(cs.artifact.tracker.project_id)
        records.record(s, cs.id, mode, cs.created_at)
        answer = {
            **artifact_view(cs.artifact, author, with_history=False),
            "changeset_id": cs.id,
            "notification": {"mode": mode.value, "status": f"/api/changesets/{cs.id}/notification"},
        }
    runtime.dispatcher.after_commit(cs.id, mode)
    return answer


@router.post("/trackers/{tracker_id}/artifacts", status_code=201, response_model=ArtifactWritten)
def post_artifact(
    tracker_id: Id, body: ArtifactCreate, caller: Caller, runtime: RuntimeDep
) -> dict[str, Any]:
    return _change(
        runtime,
        caller,
        lambda s, author: create_artifact(
            s,
            tracker_id=tracker_id,
            author=author,
            values=body.values,
            comment=body.comment,
            comment_private=body.comment_private,
        ),
    )


@router.patch("/artifacts/{artifact_id}", response_model=ArtifactWritten)
def patch_artifact(
    artifact_id: Id, body: ArtifactUpdate, caller: Caller, runtime: RuntimeDep
) -> dict[str, Any]:
    """An update that changes nothing answers 200 with the artifact as it is, no changeset and no mail."""
    try:
        return _patch(artifact_id, body, caller, runtime)
    except NothingChanged:
        with runtime.db.read() as s:
            viewer = s.merge(caller, load=False)
            artifact = get_artifact(s, artifact_id, viewer)
            view = artifact_view(artifact, viewer, with_history=False)
        return {**view, "changeset_id": None, "notification": None}


def _patch(artifact_id: int, body: ArtifactUpdate, caller: User, runtime: Runtime) -> dict[str, Any]:
    return _change(
        runtime,
        caller,
        lambda s, author: update_artifact(
            s,
            artifact_id=artifact_id,
            author=author,
            values=body.values,
            comment=body.comment,
            comment_private=body.comment_private,
            expected_version=body.version,
        ),
    )


@router.get(
    "/artifacts/{artifact_id}",
    summary="An artifact and its history, as the caller may see them",
    response_model=ArtifactRead,
)
def read_artifact(artifact_id: Id, caller: AnyCaller, runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.db.read() as s:
        viewer = s.merge(caller.user, load=False) if caller.user is not None else None
        return artifact_view(get_artifact(s, artifact_id, viewer), viewer)


@router.get(
    "/artifacts/{artifact_id}/subscription",
    summary="The caller's subscription state and its meaning",
    response_model=ArtifactSubscription,
)
def read_subscription(artifact_id: Id, caller: Caller, runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.db.read() as s:
        state = subscriptions.artifact_state(s, artifact_id, s.merge(caller, load=False))
    return {"artifact_id": artifact_id, "state": state, "meaning": subscriptions.ARTIFACT_STATES[state]}


@router.put(
    "/artifacts/{artifact_id}/subscription",
    summary="Set the subscription: default, following or unsubscribed",
    response_model=ArtifactSubscription,
)
def put_subscription(
    artifact_id: Id, body: SubscriptionChange, caller: Caller, runtime: RuntimeDep
) -> dict[str, Any]:
    with runtime.db.session() as s:
        subscriptions.set_artifact_state(s, artifact_id, s.merge(caller, load=False), body.state)
    return {
        "artifact_id": artifact_id,
        "state": body.state,
        "meaning": subscriptions.ARTIFACT_STATES[body.state],
    }


@router.delete(
    "/artifacts/{artifact_id}/subscription",
    status_code=204,
    summary="Back to the default state: told when another reason (assigned, cc, a list...) applies",
)
def delete_subscription(artifact_id: Id, caller: Caller, runtime: RuntimeDep) -> Response:
    with runtime.db.session() as s:
        subscriptions.clear_subscription(s, artifact_id, s.merge(caller, load=False))
    return Response(status_code=204)


@router.get(
    "/trackers/{tracker_id}/subscription",
    summary="The caller's tracker subscription state",
    response_model=TrackerSubscription,
)
def read_tracker_subscription(tracker_id: Id, caller: Caller, runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.db.read() as s:
        state = subscriptions.tracker_state(s, tracker_id, s.merge(caller, load=False))
    return {"tracker_id": tracker_id, "state": state, "meaning": subscriptions.TRACKER_STATES[state]}


@router.put(
    "/trackers/{tracker_id}/subscription",
    summary="Unsubscribe from a tracker, or back to default",
    response_model=TrackerSubscription,
)
def put_tracker_subscription(
    tracker_id: Id, body: TrackerSubscriptionChange, caller: Caller, runtime: RuntimeDep
) -> dict[str, Any]:
    state = "default" if body.state == "following" else body.state
    with runtime.db.session() as s:
        subscriptions.set_tracker_state(s, tracker_id, s.merge(caller, load=False), state)
    return {"tracker_id": tracker_id, "state": state, "meaning": subscriptions.TRACKER_STATES[state]}
