"""An app on a fresh SQLite database with a dispatcher that records what the front end hands on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from herald.config import DispatchMode, ensure_secrets, load_settings
from herald.tracker.db import Database
from herald.tracker.schema import upgrade
from herald.web import create_app
from tests.support.tracker import World, build_world


@dataclass
class RecordingDispatcher:
    """Stands in for inline/async delivery; the delivery paths have their own end-to-end tests."""

    mode: DispatchMode = DispatchMode.INLINE
    committed: list[tuple[int, DispatchMode]] = field(default_factory=list)

    def mode_for(self, project_id: int) -> DispatchMode:
        return self.mode

    def after_commit(self, changeset_id: int, mode: DispatchMode) -> None:
        self.committed.append((changeset_id, mode))

    def close(self) -> None:
        pass


@dataclass
class Api:
    client: TestClient
    world: World
    admin: dict[str, str]
    dispatcher: RecordingDispatcher
    db: Database

    def as_user(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.world.tokens[name]}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = ensure_secrets(load_settings(env={"HERALD_DATA_DIR": str(tmp_path)}))
    db = Database(settings.database_url)
    upgrade(db.engine)
    world = build_world(db)
    dispatcher = RecordingDispatcher()
    app = create_app(settings, dispatcher_factory=lambda _s, _db: dispatcher)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, world, {"Authorization": f"Bearer {settings.admin_token}"}, dispatcher, db)
    db.dispose()
