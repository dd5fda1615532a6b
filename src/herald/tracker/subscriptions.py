"""Subscriptions: follow or unsubscribe from an artifact, unsubscribe from (or return to) a whole tracker.

The states, as the API names them (:data:`ARTIFACT_STATES`, :data:`TRACKER_STATES`):

- artifact ``default``: told when another reason applies (assigned, submitter, cc, commented, a list...);
- artifact ``following``: told of every change, even without another reason;
- artifact ``unsubscribed``: told nothing more of it, except when @mentioned;
- tracker ``default``: the artifact states above apply; tracker ``unsubscribed``: told nothing of any of
  its artifacts, except when @mentioned.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from herald.tracker import permissions
from herald.tracker.artifacts import get_artifact
from herald.tracker.errors import InvalidInput, NotFound
from herald.tracker.models import (
    ArtifactSubscription,
    SubscriptionState,
    Tracker,
    TrackerUnsubscription,
    User,
    utcnow,
)
from herald.tracker.trackers import get_tracker

__all__ = [
    "ARTIFACT_STATES",
    "TRACKER_STATES",
    "artifact_state",
    "clear_subscription",
    "follow",
    "resubscribe_tracker",
    "set_artifact_state",
    "set_tracker_state",
    "tracker_state",
    "unsubscribe",
    "unsubscribe_tracker",
]

ARTIFACT_STATES = {
    "default": "told when another reason applies: assigned, submitter, cc, mentioned, commented, a list",
    "following": "told of every change to the artifact, even without another reason",
    "unsubscribed": "told nothing more of the artifact, except when @mentioned",
}
TRACKER_STATES = {
    "default": "each artifact's own state applies",
    "unsubscribed": "told nothing of the tracker's artifacts, except when @mentioned",
}


def _set(session: Session, artifact_id: int, user: User, state: SubscriptionState) -> None:
    get_artifact(session, artifact_id, user)
    sub = session.get(ArtifactSubscription, (artifact_id, user.id))
    if sub is None:
        session.add(ArtifactSubscription(artifact_id=artifact_id, user_id=user.id, state=state))
    else:
        sub.state = state
        sub.updated_at = utcnow()
    session.flush()


def follow(session: Session, artifact_id: int, user: User) -> None:
    """Hear of every change to the artifact, even without another reason to."""
    _set(session, artifact_id, user, SubscriptionState.FOLLOWING)


def unsubscribe(session: Session, artifact_id: int, user: User) -> None:
    """Hear nothing more of the artifact, except when @mentioned."""
    _set(session, artifact_id, user, SubscriptionState.UNSUBSCRIBED)


def clear_subscription(session: Session, artifact_id: int, user: User) -> None:
    """Back to the default: notified when another reason (assignment, CC, list...) applies."""
    get_artifact(session, artifact_id, user)
    session.execute(
        delete(ArtifactSubscription).where(
            ArtifactSubscription.artifact_id == artifact_id, ArtifactSubscription.user_id == user.id
        )
    )


def _readable_tracker(session: Session, tracker_id: int, user: User) -> Tracker:
    """The tracker if ``user`` may read its project; NotFound otherwise, exactly as for an unknown id."""
    tracker = get_tracker(session, tracker_id)
    if not permissions.can_read_artifact(user, tracker.project):
        raise NotFound(f"tracker {tracker_id} does not exist")
    return tracker


def unsubscribe_tracker(session: Session, tracker_id: int, user: User) -> None:
    """Hear nothing more of the tracker's artifacts, except when @mentioned."""
    _readable_tracker(session, tracker_id, user)
    if session.get(TrackerUnsubscription, (tracker_id, user.id)) is None:
        session.add(TrackerUnsubscription(tracker_id=tracker_id, user_id=user.id))
        session.flush()


def resubscribe_tracker(session: Session, tracker_id: int, user: User) -> None:
    """Undo :func:`unsubscribe_tracker`: back to the default for the tracker's artifacts."""
    _readable_tracker(session, tracker_id, user)
    session.execute(
        delete(TrackerUnsubscription).where(
            TrackerUnsubscription.tracker_id == tracker_id, TrackerUnsubscription.user_id == user.id
        )
    )


def artifact_state(session: Session, artifact_id: int, user: User) -> str:
    """``default``, ``following`` or ``unsubscribed`` (NotFound if the user may not read the artifact)."""
    get_artifact(session, artifact_id, user)
    sub = session.get(ArtifactSubscription, (artifact_id, user.id))
    return "default" if sub is None else sub.state.value


def set_artifact_state(session: Session, artifact_id: int, user: User, state: str) -> None:
    """Put the user's subscription to the artifact in one of :data:`ARTIFACT_STATES`."""
    if state == "default":
        clear_subscription(session, artifact_id, user)
    elif state == "following":
        follow(session, artifact_id, user)
    elif state == "unsubscribed":
        unsubscribe(session, artifact_id, user)
    else:
        raise InvalidInput(f"state must be one of {', '.join(ARTIFACT_STATES)}", "state")


def tracker_state(session: Session, tracker_id: int, user: User) -> str:
    """``default`` or ``unsubscribed`` (NotFound if the user may not read the tracker)."""
    _readable_tracker(session, tracker_id, user)
    gone = session.get(TrackerUnsubscription, (tracker_id, user.id)) is not None
    return "unsubscribed" if gone else "default"


def set_tracker_state(session: Session, tracker_id: int, user: User, state: str) -> None:
    """Put the user's subscription to the tracker in one of :data:`TRACKER_STATES`."""
    if state == "unsubscribed":
        unsubscribe_tracker(session, tracker_id, user)
    elif state == "default":
        resubscribe_tracker(session, tracker_id, user)
    else:
        raise InvalidInput(f"state must be one of {', '.join(TRACKER_STATES)}", "state")
