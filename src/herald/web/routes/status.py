"""Health and notification status: what an admin or a monitoring probe reads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from herald.outbox import notification_detail
from herald.tracker.errors import NotFound
from herald.web.answers import Health
from herald.web.auth import Admin
from herald.web.errors import ERROR_RESPONSES
from herald.web.routes.common import Id, RuntimeDep

router = APIRouter(tags=["status"])


@router.get(
    "/healthz",
    summary="Liveness and database reachability (no auth)",
    responses={
        200: {"model": Health, "description": "up, and the database answers"},
        503: {"model": Health, "description": "the database cannot be reached"},
    },
)
def healthz(runtime: RuntimeDep) -> JSONResponse:
    try:
        with runtime.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return JSONResponse({"status": "error", "database": exc.__class__.__name__}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get(
    "/api/changesets/{changeset_id}/notification",
    summary="The job and each recipient's delivery",
    responses=ERROR_RESPONSES,
)
def changeset_notification(changeset_id: Id, _: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.db.read() as s:
        detail = notification_detail(s, changeset_id)
        if detail is None:
            raise NotFound(f"changeset {changeset_id} has no notification")
        return detail
