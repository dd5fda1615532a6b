"""Health and notification status: what an admin or a monitoring probe reads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from herald.ops.check import run_check
from herald.ops.workers import missing_parts, processes
from herald.outbox import notification_detail
from herald.tracker.errors import NotFound
from herald.web.answers import Health
from herald.web.auth import Admin
from herald.web.errors import ERROR_RESPONSES
from herald.web.routes.common import Id, RuntimeDep

router = APIRouter(tags=["status"])


@router.get(
    "/healthz",
    summary="Liveness: the database, and whether the workers and relays expected are up (no auth)",
    responses={
        200: {"model": Health, "description": "up: the database answers and every expected part runs"},
        503: {"model": Health, "description": "`error` (database unreachable) or `degraded` (parts missing)"},
    },
)
def healthz(runtime: RuntimeDep) -> JSONResponse:
    """200 ``{"status": "ok"}``; 503 ``{"status": "degraded", "missing": [...]}`` while workers (as many
    as the configuration or the supervisors expect), the outbox relay or the SMTP relay (as the workers'
    heartbeats tell) are down; 503 ``{"status": "error"}`` when the database cannot be read. Names no host,
    address or error text: anyone may call it."""
    try:
        with runtime.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        parts = missing_parts(runtime.settings, processes(runtime.db))
    except Exception as exc:
        return JSONResponse({"status": "error", "database": exc.__class__.__name__}, status_code=503)
    if parts["missing"]:
        return JSONResponse({"status": "degraded", "database": "ok", **parts}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok", **parts})


@router.get(
    "/api/check",
    summary="The verdict of herald check: status, findings with their next steps, perfdata",
    responses=ERROR_RESPONSES,
)
def api_check(_: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    """The document ``herald check --json`` prints (without ``target``); always HTTP 200, the verdict is in
    ``status`` (OK, WARNING, CRITICAL, UNKNOWN) and ``code`` (the Nagios exit code)."""
    return run_check(runtime.settings, runtime.db, runtime.queue).as_dict()


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
