"""Delivery beds: a world in a real database (SQLite file, or PostgreSQL), a real SMTP server (aiosmtpd) and
settings pointing at them; shared by the delivery, worker and web dispatcher tests."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from herald.config import DispatchMode, Settings, ensure_secrets
from herald.outbox import Delivery, Notification, records
from herald.tracker.artifacts import create_artifact, update_artifact
from herald.tracker.db import Database
from tests.support.redis_server import RedisServer
from tests.support.smtp import SmtpServer, smtp_settings
from tests.support.tracker import World, build_world

#: bob (assigned), carol and dave (cc): alice's changes notify these three.
RECIPIENTS = ("bob@example.org", "carol@example.org", "dave@example.org")


def make_settings(server: SmtpServer, tmp_path: Path, **overrides: object) -> Settings:
    """Settings for ``server`` with fast retries; a secret key in ``tmp_path``."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "lease_seconds": 5,
        "smtp_timeout": 2,
    }
    values.update(overrides)
    return ensure_secrets(smtp_settings(server, **values))


def new_changeset(db: Database, world: World, mode: DispatchMode = DispatchMode.ASYNC, **values: Any) -> int:
    """alice creates a bug assigned to bob with carol and dave in cc; returns the changeset id."""
    with db.session() as s:
        author = s.merge(world.users["alice"], load=False)
        cs = create_artifact(
            s,
            tracker_id=world.bugs.id,
            author=author,
            values={"title": "Crash on save", "assigned_to": "bob", "cc": ["carol", "dave"], **values},
        )
        records.record(s, cs.id, mode, cs.created_at)
        return cs.id


def update_changeset(db: Database, world: World, artifact_id: int, mode: DispatchMode, **values: Any) -> int:
    with db.session() as s:
        author = s.merge(world.users["alice"], load=False)
        cs = update_artifact(s, artifact_id=artifact_id, author=author, values=values)
        records.record(s, cs.id, mode, cs.created_at)
        return cs.id


def deliveries(db: Database, changeset_id: int) -> dict[str, Delivery]:
    with db.session() as s:
        n = s.get(Notification, changeset_id)
        assert n is not None
        return {d.address: d for d in n.deliveries}


def notification(db: Database, changeset_id: int) -> Notification:
    with db.session() as s:
        n = s.get(Notification, changeset_id)
        assert n is not None
        s.expunge(n)
        return n


def message_ids(server: SmtpServer) -> list[str]:
    return [str(m.message()["Message-ID"]) for m in server.messages]


@dataclass
class Bed:
    """A world in a database, an SMTP server and settings pointing at it."""

    db: Database
    world: World
    server: SmtpServer
    settings: Settings
    tmp_path: Path

    def changeset(self, mode: DispatchMode = DispatchMode.ASYNC, **values: Any) -> int:
        return new_changeset(self.db, self.world, mode, **values)


@pytest.fixture
def make_bed(tmp_path: Path, smtp_server: SmtpServer) -> Callable[..., Bed]:
    def make(db: Database, **overrides: object) -> Bed:
        world = build_world(db)
        return Bed(db, world, smtp_server, make_settings(smtp_server, tmp_path, **overrides), tmp_path)

    return make


@pytest.fixture
def bed(sqlite_db: Database, make_bed: Callable[..., Bed]) -> Bed:
    return make_bed(sqlite_db)


@pytest.fixture
def any_bed(any_db: Database, make_bed: Callable[..., Bed]) -> Bed:
    return make_bed(any_db)


class Records(logging.Handler):
    """Log records of one logger, captured whatever the ``herald`` logger's propagation is."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def capture_log() -> Iterator[Callable[[str], Records]]:
    attached: list[tuple[logging.Logger, Records, int]] = []

    def capture(name: str) -> Records:
        logger = logging.getLogger(name)
        handler = Records()
        attached.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        return handler

    yield capture
    for logger, handler, level in attached:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def redis_bed(bed: Bed, redis_server: RedisServer, redis_namespace: str) -> Bed:
    bed.settings = dataclasses.replace(
        bed.settings,
        queue_backend="redis",
        redis_url=redis_server.url,
        redis_namespace=redis_namespace,
        async_emails=dataclasses.replace(bed.settings.async_emails, all=True),
    )
    return bed
