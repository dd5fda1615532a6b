"""What the web process holds open for its lifetime: settings, the database, and the notification dispatcher.

Built in the app's lifespan (Starlette's recommended place) and reached by routes through ``get_runtime``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request

from herald.config import DispatchMode, Settings
from herald.queue import Queue
from herald.tracker.db import Database


class Dispatcher(Protocol):
    """Hands a committed changeset's notification on: inline delivery or a queue push."""

    def mode_for(self, project_id: int) -> DispatchMode: ...

    def after_commit(self, changeset_id: int, mode: DispatchMode) -> None: ...

    def close(self) -> None: ...


@dataclass
class Runtime:
    settings: Settings
    db: Database
    dispatcher: Dispatcher
    queue: Queue
    live_workers: Callable[[], int] | None = None

    def close(self) -> None:
        self.dispatcher.close()
        self.queue.close()
        self.db.dispose()


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime
