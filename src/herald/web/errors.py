"""Every error the API returns is JSON ``{"error": {"code", "message", "field"?}}`` with a 4xx status.

Tracker errors map one type to one status; request-shape errors from FastAPI become 422 with a readable
message; anything unexpected is logged and answered 500 without internals (no input should get there).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from herald.tracker.errors import Conflict, InvalidInput, NotFound, PermissionDenied, TrackerError

log = logging.getLogger("herald.web")

_STATUS: dict[type[TrackerError], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    InvalidInput: (422, "invalid"),
    PermissionDenied: (403, "forbidden"),
    Conflict: (409, "conflict"),
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, dict[str, str]]:
    body = {"code": code, "message": message}
    if field:
        body["field"] = field
    return {"error": body}


def _tracker_error(_request: Request, exc: TrackerError) -> JSONResponse:
    status, code = next(
        ((s, c) for cls, (s, c) in _STATUS.items() if isinstance(exc, cls)), (400, "bad_request")
    )
    return JSONResponse(error_body(code, exc.message, getattr(exc, "field", None)), status_code=status)


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    first_field = None
    for err in exc.errors()[:10]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        where = ".".join(loc) or "body"
        first_field = first_field or where
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    message = "; ".join(problems) or "the request body is not valid"
    return JSONResponse(error_body("invalid", message, first_field), status_code=422)


def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "error"
    )
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal", "internal error; see herald.log"), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(TrackerError, _tracker_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
