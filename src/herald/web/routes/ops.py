"""What monitoring and admins read: /metrics, /api/queue, and the admin pages (dashboard and mailbox)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from herald.ops.metrics import HeraldCollector, render_metrics
from herald.queue import QueueError
from herald.web.auth import Admin
from herald.web.errors import ERROR_RESPONSES, ErrorBody, error_body
from herald.web.routes.common import RuntimeDep

router = APIRouter(tags=["ops"])
log = logging.getLogger("herald.web")
COOKIE = "herald_admin"


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)
def metrics(runtime: RuntimeDep) -> Response:
    collector = HeraldCollector(runtime.settings, runtime.db, runtime.queue)
    return Response(render_metrics(collector), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/api/queue",
    summary="Queue depth, in flight, delayed, dead and the oldest job's age",
    responses={**ERROR_RESPONSES, 503: {"model": ErrorBody, "description": "unavailable: no queue"}},
)
def queue_stats(_: Admin, runtime: RuntimeDep) -> Any:
    from fastapi.responses import JSONResponse

    try:
        stats = runtime.queue.stats()
    except QueueError as exc:
        return JSONResponse(error_body("unavailable", f"the queue cannot be reached: {exc}"), status_code=503)
    return {
        "backend": runtime.settings.queue_backend,
        "depth": stats.depth,
        "in_flight": stats.in_flight,
        "delayed": stats.delayed,
        "dead": stats.dead,
        "oldest_age_seconds": stats.oldest_age_seconds,
    }
