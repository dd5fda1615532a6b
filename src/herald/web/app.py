"""The application factory. Its lifespan owns the connections (database, queue, mail transport)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from herald.config import Settings
from herald.ops.workers import live_worker_count
from herald.queue import make_queue
from herald.tracker.db import Database
from herald.web import errors
from herald.web.limits import BodySizeLimit
from herald.web.routes import admin, artifact_page, artifacts, console, mailbox, ops, status, unsubscribe
from herald.web.runtime import Dispatcher, Runtime
from herald.web.throttle import LoginThrottle

DispatcherFactory = Callable[[Settings, Database], Dispatcher]


def _default_dispatcher(settings: Settings, db: Database) -> Dispatcher:
    from herald.web.dispatcher import build_dispatcher

    return build_dispatcher(settings, db)


def create_app(settings: Settings, *, dispatcher_factory: DispatcherFactory | None = None) -> FastAPI:
    """Build the ASGI app. ``settings`` must already carry the admin token (see ``ensure_secrets``)."""
    factory = dispatcher_factory or _default_dispatcher

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.database_url)
        runtime = Runtime(
            settings=settings,
            db=db,
            dispatcher=factory(settings, db),
            queue=make_queue(settings),
            live_workers=lambda: live_worker_count(settings, db),
        )
        app.state.runtime = runtime
        try:
            yield
        finally:
            runtime.close()

    app = FastAPI(
        title="herald",
        summary="Notification backend for issue trackers",
        version=importlib.metadata.version("herald"),
        lifespan=lifespan,
        # Starlette builds its trailing-slash redirects from the Host header, which the client chooses
        # (issue 9, defect 10); herald's own redirects are relative.
        redirect_slashes=False,
    )
    app.state.login_throttle = LoginThrottle()
    errors.install(app)
    app.include_router(admin.router, responses=errors.ERROR_RESPONSES)
    app.include_router(artifacts.router, responses=errors.ERROR_RESPONSES)
    app.include_router(status.router)
    app.include_router(mailbox.router, responses=errors.ERROR_RESPONSES)
    app.include_router(unsubscribe.router, responses=errors.PAGE_RESPONSES)
    app.include_router(ops.router)
    app.include_router(console.router)
    app.include_router(artifact_page.router)
    app.add_middleware(BodySizeLimit)
    return app
