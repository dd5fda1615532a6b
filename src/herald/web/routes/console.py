"""The admin console at ``/admin``: the check's verdict, live figures, workers, the relay, dead letters
with their actions, a changeset's deliveries and the built-in mailbox. Server-rendered; one small script
(``static/console.js``) polls ``/admin/live.json`` to redraw the counters and charts.

Every page needs a signed-in session (:mod:`herald.web.admin_session`); every action is a POST carrying
the session's CSRF token. Redirects are relative (never built from the Host header).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from herald.mail import MailboxTransport
from herald.outbox import Notification, NotificationState, notification_detail, notifications_in_state
from herald.outbox import recent_notifications as recent
from herald.queue import QueueError
from herald.tracker.admin_sessions import SessionInfo
from herald.web import admin_session, console
from herald.web.pages import SECURITY_HEADERS, page
from herald.web.routes.common import MAX_ID, RuntimeDep
from herald.web.runtime import Runtime
from herald.web.throttle import LoginThrottle

router = APIRouter(include_in_schema=False)
log = logging.getLogger("herald.web")

#: The console runs its own script and fetches its own JSON, nothing else; a mail's HTML shown in a
#: sandboxed srcdoc frame inherits this policy, so it loads nothing either.
CONSOLE_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
}
POLL_MS = 5000
#: A dead letter's id: a job id (32 hex digits), or what a backend names a malformed entry by
#: (``entry-<shard>/<stream id>`` in Redis, a row id in SQL): printable, no spaces, bounded.
_LETTER_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}|entry-[0-9]{1,3}/[0-9]{1,20}-[0-9]{1,20}")
_DIGITS = re.compile(r"[0-9]{1,19}")  # not str.isdigit: it takes "²", which int() refuses
_SCRIPT = files("herald.web").joinpath("static/console.js").read_bytes()
_NOTES = {
    "retried": "{n} dead letter(s) put back in line.",
    "retry-none": "Nothing was retried: the letter is gone, or it is malformed (discard it instead).",
    "discarded": "{n} dead letter(s) discarded.",
    "discard-none": "Nothing was discarded: the letter was already gone.",
}


def _console(
    template: str, info: SessionInfo, runtime: Runtime, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return page(
        template,
        status_code,
        response_headers=CONSOLE_HEADERS,
        csrf=info.csrf_token,
        mailbox=not runtime.settings.smtp_host,
        when=console.when,
        **context,
    )


def _login(status_code: int = 200, **context: Any) -> HTMLResponse:
    return page("login.html", status_code, **context)


def _minutes(request: Request) -> console.MinuteCache:
    """The app's cache of the hour chart's closed minutes (one per app, like the login throttle)."""
    cache = getattr(request.app.state, "console_minutes", None)
    if cache is None:
        cache = request.app.state.console_minutes = console.MinuteCache()
    return cache


def _note(request: Request) -> str:
    code = request.query_params.get("note", "")
    template = _NOTES.get(code, "")
    n = request.query_params.get("n", "")
    return template.format(n=n if _DIGITS.fullmatch(n) and len(n) < 10 else "?")


def state_label(n: Notification) -> str:
    """A notification's state in words: a dead one says dead, whatever its run count."""
    if n.state is NotificationState.RETRYING and n.next_attempt_at is not None:
        return f"retrying at {console.when(n.next_attempt_at)}"
    return n.state.value


# --- pages -----------------------------------------------------------------------------------------------


@router.get("/admin", response_class=HTMLResponse)
def dashboard(request: Request, runtime: RuntimeDep) -> HTMLResponse:
    info = admin_session.current(request, runtime)
    if info is None:
        return _login()
    hosts = console.workers(runtime)
    dead, dead_error = console.dead_letters(runtime)
    with runtime.db.read() as s:
        rows = recent(s, 50)
        dead_rows = notifications_in_state(s, NotificationState.DEAD, 50)
    return _console(
        "admin.html",
        info,
        runtime,
        verdict=console.verdict(runtime),
        now=console.when(datetime.now(UTC)),
        live=console.live_figures(runtime, _minutes(request)),
        poll_ms=POLL_MS,
        hosts=hosts,
        relay=console.relay_state(runtime, hosts),
        dead=dead,
        dead_error=dead_error,
        dead_notifications=dead_rows,
        rows=rows,
        state_label=state_label,
        settings=runtime.settings,
        note=_note(request),
    )


@router.get("/admin/", include_in_schema=False)
def dashboard_slash() -> Response:
    # Relative, never built from the Host header (issue 9, defect 10): the app does not redirect slashes.
    return RedirectResponse("/admin", status_code=307)


@router.get("/admin/live.json")
def live(request: Request, runtime: RuntimeDep) -> Response:
    if admin_session.current(request, runtime) is None:
        return JSONResponse(
            {"error": {"code": "unauthorized", "message": "sign in at /admin"}}, status_code=401
        )
    return JSONResponse(
        console.live_figures(runtime, _minutes(request)), headers={"Cache-Control": "no-store"}
    )


@router.get("/admin/static/console.js")
def script() -> Response:
    return Response(
        _SCRIPT,
        media_type="text/javascript",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )


@router.get("/admin/changesets", response_class=HTMLResponse)
def changeset_lookup(
    request: Request, runtime: RuntimeDep, id: Annotated[str, Query(max_length=40)] = ""
) -> Response:
    if admin_session.current(request, runtime) is None:
        return _login()
    text = id.strip().lstrip("#")
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise HTTPException(400, f"a changeset id is a whole number from 1 to {MAX_ID}, not {id[:40]!r}")
    return RedirectResponse(f"/admin/changesets/{int(text)}", status_code=303)


@router.get("/admin/changesets/{changeset_id}", response_class=HTMLResponse)
def changeset(
    request: Request, runtime: RuntimeDep, changeset_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> HTMLResponse:
    info = admin_session.current(request, runtime)
    if info is None:
        return _login()
    with runtime.db.read() as s:
        detail = notification_detail(s, changeset_id)
    letters, _ = console.dead_letters(runtime, limit=1000)
    mine = [d for d in letters if d.changeset_id == changeset_id]
    state_text = ""
    if detail is not None:
        state_text = detail["state"]
        if detail["state"] == "retrying" and detail["next_attempt_at"]:
            state_text = f"retrying at {console.when(detail['next_attempt_at'])}"
    return _console(
        "changeset.html",
        info,
        runtime,
        status_code=200 if detail is not None else 404,
        changeset_id=changeset_id,
        detail=detail,
        letters=mine,
        state_text=state_text,
        note=_note(request),
    )


@router.get("/admin/mailbox", response_class=HTMLResponse)
def mailbox(
    request: Request, runtime: RuntimeDep, key: Annotated[str | None, Query(max_length=300)] = None
) -> HTMLResponse:
    info = admin_session.current(request, runtime)
    if info is None:
        return _login()
    if runtime.settings.smtp_host:
        return _console("mailbox.html", info, runtime, off=True)
    box = MailboxTransport(runtime.settings)
    if key is None:
        return _console(
            "mailbox.html", info, runtime, messages=box.list_messages(limit=100), total=box.count()
        )
    try:
        message = box.get_message(key)
    except (KeyError, ValueError):
        return _console("mailbox.html", info, runtime, status_code=404, missing=key)

    def part(subtype: str) -> str | None:
        body = message.get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else None

    return _console(
        "mailbox.html",
        info,
        runtime,
        message=message,
        key=key,
        headers=list(message.items()),
        text=part("plain"),
        html=part("html"),
    )


# --- sign-in and sign-out --------------------------------------------------------------------------------


def _throttle(request: Request) -> LoginThrottle:
    throttle = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        throttle = request.app.state.login_throttle = LoginThrottle()
    return throttle


@router.post("/admin/login")
async def login(request: Request, runtime: RuntimeDep) -> Response:
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
    try:
        form = await admin_session.read_form(request)
    except HTTPException:
        form = {}
    token = form.get("token", "")
    admin = runtime.settings.admin_token or ""
    if not admin or not hmac.compare_digest(token.encode(), admin.encode()):
        throttle.failed(client)
        log.info("admin sign-in failed from %s", client)
        return _login(401, error=True)
    throttle.succeeded(client)
    response = RedirectResponse("/admin", status_code=303)
    admin_session.start(request, runtime, response)
    log.info("admin signed in from %s", client)
    return response


@router.post("/admin/logout")
async def logout(request: Request, runtime: RuntimeDep) -> Response:
    info = admin_session.current(request, runtime)
    if info is not None:
        admin_session.require_csrf(await admin_session.read_form(request), info)
    response = RedirectResponse("/admin", status_code=303)
    admin_session.end(request, runtime, response)
    return response


# --- dead-letter actions ---------------------------------------------------------------------------------


async def _action(request: Request, runtime: Runtime) -> tuple[str | None, str]:
    """Check the session, the CSRF token and the form; return (job id or None for all, where to go back)."""
    info = admin_session.current(request, runtime)
    if info is None:
        raise HTTPException(401, "sign in at /admin first")
    form = await admin_session.read_form(request)
    admin_session.require_csrf(form, info)
    back = "/admin#dead"
    if form.get("back"):
        if not _DIGITS.fullmatch(form["back"]) or not 1 <= int(form["back"]) <= MAX_ID:
            raise HTTPException(400, "back must be a changeset id")
        back = f"/admin/changesets/{int(form['back'])}"
    if form.get("all") == "1" and "job_id" not in form:
        return None, back
    job_id = form.get("job_id", "")
    if not _LETTER_ID.fullmatch(job_id):
        raise HTTPException(400, "job_id must name a dead letter, as listed on the page (or send all=1)")
    return job_id, back


def _redirect(back: str, note: str, n: int) -> Response:
    path, _, fragment = back.partition("#")
    return RedirectResponse(
        f"{path}?note={note}&n={n}" + (f"#{fragment}" if fragment else ""), status_code=303
    )


async def _dead_letter_action(
    request: Request, runtime: RuntimeDep, act: Callable[[str | None], int], verb: str, notes: tuple[str, str]
) -> Response:
    """Retry or discard one dead letter (``job_id``) or all (``all=1``), then back to the page with a note."""
    job_id, back = await _action(request, runtime)
    try:
        n = act(job_id)
    except QueueError as exc:
        raise HTTPException(503, f"the queue cannot be reached: {exc}") from None
    log.info("admin console: %s %d dead letter(s) (%s)", verb, n, job_id or "all")
    return _redirect(back, notes[0] if n else notes[1], n)


@router.post("/admin/dead/retry")
async def retry_dead(request: Request, runtime: RuntimeDep) -> Response:
    return await _dead_letter_action(
        request, runtime, runtime.queue.requeue_dead, "requeued", ("retried", "retry-none")
    )


@router.post("/admin/dead/discard")
async def discard_dead(request: Request, runtime: RuntimeDep) -> Response:
    return await _dead_letter_action(
        request, runtime, runtime.queue.purge_dead, "discarded", ("discarded", "discard-none")
    )
