"""Subscriptions: follow or unsubscribe from an artifact, unsubscribe from (or return to) a whole tracker."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from herald.tracker.artifacts import get_artifact
from herald.tracker.models import ArtifactSubscription, SubscriptionState, TrackerUnsubscription, User, utcnow
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


def unsubscribe_tracker(session: Session, tracker_id: int, user: User) -> None:
    get_tracker(session, tracker_id)
    if session.get(TrackerUnsubscription, (tracker_id, user.id)) is None:
        session.add(TrackerUnsubscription(tracker_id=tracker_id, user_id=user.id))
        session.flush()


def resubscribe_tracker(session: Session, tracker_id: int, user: User) -> None:
    session.execute(
        delete(TrackerUnsubscription).where(
            TrackerUnsubscription.tracker_id == tracker_id, TrackerUnsubscription.user_id == user.id
        )
    )
