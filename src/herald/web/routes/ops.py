"""What monitoring and admins read: /metrics, /api/queue, and the admin pages (dashboard and mailbox)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from herald.mail import MailboxTransport
from herald.ops.check import run_check
from herald.ops.metrics import HeraldCollector, render_metrics
from herald.outbox import read_backlog, recent_notifications
from herald.queue import QueueError
from herald.web.auth import Admin
from herald.web.errors import ERROR_RESPONSES, ErrorBody, error_body
from herald.web.pages import page
from herald.web.routes.common import RuntimeDep
from herald.web.runtime import Runtime
from herald.web.throttle import LoginThrottle

router = APIRouter(tags=["ops"])
log = logging.getLogger("herald.web")
COOKIE = "herald_admin"


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
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


# --- admin pages -----------------------------------------------------------------------------------------
# Browsers cannot send a bearer header on navigation, so the pages log in once with the admin token and
# keep a cookie that is an HMAC of it: HttpOnly, SameSite=Strict (no cross-site form posts), never the token.


def _session_value(runtime: Runtime) -> str:
    key = (runtime.settings.secret_key or "").encode()
    return hmac.new(
        key, b"admin:" + (runtime.settings.admin_token or "").encode(), hashlib.sha256
    ).hexdigest()


def _logged_in(request: Request, runtime: Runtime) -> bool:
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), _session_value(runtime).encode())


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
def admin_page(request: Request, runtime: RuntimeDep) -> HTMLResponse:
    if not _logged_in(request, runtime):
        return page("login.html")
    report = run_check(runtime.settings, runtime.db, runtime.queue, runtime.live_workers)
    with runtime.db.read() as s:
        backlog = read_backlog(s, runtime.settings.stale_after_seconds)
        rows = recent_notifications(s, 50)
        try:
            stats = runtime.queue.stats()
            dead = runtime.queue.dead_letters(limit=20)
        except QueueError:
            stats, dead = None, []
        return page(
            "admin.html",
            report=report,
            backlog=backlog,
            stats=stats,
            dead=dead,
            rows=rows,
            settings=runtime.settings,
            mailbox=not runtime.settings.smtp_host,
        )


@router.get("/admin/", include_in_schema=False)
def admin_page_slash() -> Response:
    # Relative, never built from the Host header (issue 9, defect 10): the app does not redirect slashes.
    return RedirectResponse("/admin", status_code=307)


def _throttle(request: Request) -> LoginThrottle:
    throttle = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        throttle = request.app.state.login_throttle = LoginThrottle()
    return throttle


@router.post("/admin/login", include_in_schema=False)
async def admin_login(request: Request, runtime: RuntimeDep) -> Response:
    throttle = _throttle(request)
    client = request.client.host if request.client is not None else "unknown"
    wait = throttle.retry_after(client)
    if wait is not None:
        log.warning("admin sign-in refused: too many failures from %s, retry in %ss", client, wait)
        return page(
            "login.html",
            status_code=429,
            error=True,
            retry_after=wait,
            response_headers={"Retry-After": str(wait)},
        )
    body = (await request.body())[:4096].decode("utf-8", "replace")
    token = (parse_qs(body).get("token") or [""])[0]
    admin = runtime.settings.admin_token or ""
    if not admin or not hmac.compare_digest(token.encode(), admin.encode()):
        throttle.failed(client)
        log.info("admin sign-in failed from %s", client)
        return page("login.html", status_code=401, error=True)
    throttle.succeeded(client)
    response = RedirectResponse("/admin", status_code=303)
    response.set_cookie(
        COOKIE,
        _session_value(runtime),
        httponly=True,
        samesite="strict",
        secure=runtime.settings.base_url.startswith("https://"),
        max_age=12 * 3600,
    )
    return response


@router.post("/admin/logout", include_in_schema=False)
def admin_logout() -> Response:
    response = RedirectResponse("/admin", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/admin/mailbox", response_class=HTMLResponse, include_in_schema=False)
def admin_mailbox(
    request: Request, runtime: RuntimeDep, key: Annotated[str | None, Query(max_length=300)] = None
) -> HTMLResponse:
    if not _logged_in(request, runtime):
        return page("login.html")
    if runtime.settings.smtp_host:
        return page("mailbox.html", off=True)
    box = MailboxTransport(runtime.settings)
    if key is None:
        return page("mailbox.html", messages=box.list_messages(limit=100), total=box.count())
    try:
        message = box.get_message(key)
    except (KeyError, ValueError):
        return page("mailbox.html", status_code=404, missing=key)
    text = message.get_body(preferencelist=("plain",))
    return page(
        "mailbox.html",
        message=message,
        key=key,
        headers=list(message.items()),
        text=text.get_content() if text is not None else "",
    )
