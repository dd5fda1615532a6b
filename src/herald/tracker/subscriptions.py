"""Subscriptions: follow or unsubscribe from an artifact, unsubscribe from (or return to) a whole tracker."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from herald.tracker import permissions
from herald.tracker.artifacts import get_artifact
from herald.tracker.errors import NotFound
from herald.tracker.models import (
    ArtifactSubscription,
    SubscriptionState,
    Tracker,
    TrackerUnsubscription,
    User,
    utcnow,
)
from herald.tracker.trackers import get_tracker

__all__ = ["clear_subscription", "follow", "resubscribe_tracker", "unsubscribe", "unsubscribe_tracker"]


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
