"""``herald test-send ADDRESS``: one mail through every hop of a notification, each hop timed.

The test mail is a real notification, so it cannot pass where notifications fail: a change is committed
with its outbox row in one transaction, handed on by the front end's own dispatcher (a queue push, or the
inline delivery when ``async_emails`` is on for no project), claimed by a live worker, planned, rendered
and sent through the relay like any other. The change lives in a system project, so no tracker of yours
changes:

- project ``herald-test-send`` (private), tracker ``test-mail`` (a title and an assignee), author
  ``herald-test-send`` (a user with no token anybody knows);
- each test is one new artifact assigned to the recipient: the user whose email ADDRESS is (made a
  member of the project), or else a user ``test-send-<hash>`` created once for that address.

This module prepares the change and follows it through the outbox, the ledger and the heartbeats; the
command (``herald.cli.testsend``) hands it to the dispatcher.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from herald.outbox import Delivery, DeliveryStatus, Notification, NotificationState
from herald.tracker.artifacts import create_artifact
from herald.tracker.models import GlobalNotification, Project, Role, Tracker, User, UserStatus
from herald.tracker.projects import create_project, set_member
from herald.tracker.trackers import create_tracker
from herald.tracker.users import create_user

__all__ = ["PROJECT", "Hop", "TestSendError", "Trace", "follow", "prepare"]

PROJECT = "herald-test-send"
TRACKER = "test-mail"
AUTHOR = "herald-test-send"


class TestSendError(Exception):
    """The test cannot start (an address that cannot be a recipient)."""

    __test__ = False  # not a pytest test class


@dataclass
class Hop:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Trace:
    """The hops passed so far; ``stopped`` says where and why it stopped (None: the mail was sent)."""

    hops: list[Hop] = field(default_factory=list)
    stopped: str | None = None

    @property
    def sent(self) -> bool:
        return self.stopped is None and any(h.name == "smtp" and h.ok for h in self.hops)


def _system_author(session: Session, domain: str) -> User:
    user = session.scalar(select(User).where(User.username == AUTHOR))
    if user is None:
        user, _token = create_user(  # the token is dropped: nobody can act as this user
            session, username=AUTHOR, email=f"{AUTHOR}@{domain}", real_name="herald test-send"
        )
    return user


def _recipient(session: Session, address: str) -> User:
    key = address.strip().lower()
    user = session.scalar(select(User).where(func.lower(User.email) == key))
    if user is not None:
        if user.status is not UserStatus.ACTIVE:
            raise TestSendError(f"{address} is the address of user {user.username!r}, who is suspended")
        return user
    for addresses in session.scalars(select(GlobalNotification.addresses)):
        if key in {a.lower() for a in addresses or ()}:
            raise TestSendError(
                f"{address} is a tracker's notification list: test with a personal address (a list gets "
                "the same mail through the same path)"
            )
    name = f"test-send-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    user = session.scalar(select(User).where(User.username == name))
    if user is None:
        user, _token = create_user(
            session, username=name, email=address.strip(), real_name="herald test-send"
        )
    return user


def _tracker(session: Session, author: User) -> Tracker:
    project = session.scalar(select(Project).where(Project.name == PROJECT))
    if project is None:
        project = create_project(
            session, name=PROJECT, label="herald test-send (system)", public=False, admins=[author.id]
        )
    tracker = session.scalar(select(Tracker).where(Tracker.project_id == project.id, Tracker.name == TRACKER))
    if tracker is None:
        tracker = create_tracker(
            session,
            {
                "project_id": project.id,
                "name": TRACKER,
                "item_name": "test",
                "fields": [
                    {"name": "title", "type": "string", "required": True},
                    {"name": "assigned_to", "type": "user", "notify": True},
                ],
                "semantics": {"title": "title", "assigned_to": "assigned_to"},
            },
        )
    return tracker


def prepare(session: Session, address: str, domain: str, now: str) -> tuple[int, int]:
    """Create the test change for ``address`` (see the module docstring); returns (changeset id, project
    id). The caller records its outbox row in the same transaction and hands it on after the commit."""
    author = _system_author(session, domain)
    recipient = _recipient(session, address)
    tracker = _tracker(session, author)
    set_member(session, tracker.project, recipient.id, Role.MEMBER)  # an admin stays one
    changeset = create_artifact(
        session,
        tracker_id=tracker.id,
        author=author,
        values={"title": f"herald test mail {now}", "assigned_to": recipient.username},
    )
    return changeset.id, tracker.project_id


Heartbeats = Callable[[], list[tuple[str, bool, str | None]]]  # (name, relay up, relay error) of live workers


def follow(
    session_factory: Callable[[], Session],
    changeset_id: int,
    address: str,
    *,
    started: float,
    timeout: float,
    asynchronous: bool,
    relay_state: Heartbeats | None = None,
    poll: float = 0.05,
) -> Trace:
    """Watch the change's outbox row and the recipient's ledger row until the mail is sent, refused, or
    ``timeout`` passes; each hop timed from ``started`` (``time.monotonic()``)."""
    trace = Trace()
    passed: set[str] = set()
    committed = time.monotonic() - started  # the outbox hop: the commit is done when this is called
    created: datetime | None = None
    deadline = started + timeout
    key = address.strip().lower()

    def hop(name: str, ok: bool, detail: str = "", at: datetime | None = None) -> None:
        """Timed from the database's own timestamps when there is one (a hop passed between two polls
        is not charged the poll's delay), else from when it was seen."""
        seconds = time.monotonic() - started
        if at is not None and created is not None:
            seconds = min(seconds, committed + max(0.0, (_aware(at) - _aware(created)).total_seconds()))
        passed.add(name)
        trace.hops.append(Hop(name, ok, seconds, detail))

    while True:
        with session_factory() as session:
            n = session.get(Notification, changeset_id)
            delivery = session.scalar(
                select(Delivery).where(
                    Delivery.changeset_id == changeset_id, func.lower(Delivery.address) == key
                )
            )
            state = n.state if n is not None else None
            holder, last_error = (n.worker, n.last_error) if n is not None else (None, None)
            created = n.created_at if n is not None else created
            queued_at, started_at = (n.queued_at, n.started_at) if n is not None else (None, None)
            sent_at = delivery.sent_at if delivery is not None else None
            status = delivery.status if delivery is not None else None
            reply = delivery.last_reply if delivery is not None else None
            message_id = delivery.message_id if delivery is not None else None
        if asynchronous and "queue" not in passed and state is not NotificationState.PENDING:
            hop("queue", True, "job pushed", queued_at)
        if (
            asynchronous
            and "worker" not in passed
            and state
            not in (
                NotificationState.PENDING,
                NotificationState.QUEUED,
            )
        ):
            hop("worker", True, f"claimed by {_who(holder)}", started_at)
        if status is DeliveryStatus.SENT:
            hop("smtp", True, f"accepted: {reply or 'ok'} (Message-ID {message_id})", sent_at)
            return trace
        if status is DeliveryStatus.FAILED:
            trace.stopped = f"smtp: the relay refused the mail for good: {reply}"
            return trace
        if status is DeliveryStatus.RETRYING:
            trace.stopped = f"smtp: the relay deferred the mail ({reply}); herald retries it with backoff"
            return trace
        if state is NotificationState.DEAD:
            trace.stopped = f"worker: the job was dead-lettered: {last_error}"
            return trace
        if state is NotificationState.DONE and delivery is None:
            trace.stopped = f"plan: {address} was not among the recipients (an inactive user?)"
            return trace
        if not asynchronous:  # the inline delivery ran in after_commit: what the ledger says is final
            why = reply or last_error or "no reply recorded"
            trace.stopped = (
                f"smtp: the inline delivery did not send it (the notification is {_state(state)}: {why}); "
                "the recovery worker retries it"
            )
            return trace
        if relay_state is not None and "worker" in passed:
            down = [(name, error) for name, up, error in relay_state() if not up]
            if down:
                trace.stopped = f"smtp: the relay is unusable ({down[0][1]}), as {down[0][0]} found"
                return trace
        if time.monotonic() > deadline:
            where = (
                "queue"
                if state is NotificationState.PENDING
                else "worker"
                if state is NotificationState.QUEUED
                else "smtp"
            )
            trace.stopped = (
                f"{where}: nothing happened within {timeout:g} s (the notification is {_state(state)})"
            )
            return trace
        time.sleep(poll)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _who(holder: str | None) -> str:
    """``host:worker-1:pid:random`` -> ``worker-1 on host``; ``web:pid:...`` -> ``this process``."""
    if not holder:
        return "a worker"
    parts = holder.split(":")
    if parts[0] == "web":
        return "this process (inline)"
    return f"{parts[1]} on {parts[0]} (pid {parts[2]})" if len(parts) >= 3 else holder


def _state(state: NotificationState | None) -> str:
    return "gone" if state is None else str(state.value)
