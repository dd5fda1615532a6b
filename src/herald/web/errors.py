"""Every error the API returns is JSON ``{"error": {"code", "message", "field"?}}`` with a 4xx status.

Tracker errors map one type to one status; request-shape errors from FastAPI become 422 ``invalid`` with
every problem of the body named at once (400 ``invalid_json`` when the body is not JSON at all); an
``HTTPException`` keeps its status with the code of that status; anything unexpected is logged and answered
500 without internals (no input should get there). :data:`ERROR_RESPONSES` documents the shape in OpenAPI.
"""

from __future__ import annotations

import difflib
import logging
import types
import typing
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from herald.tracker.errors import Conflict, InvalidInput, NotFound, PermissionDenied, TrackerError

log = logging.getLogger("herald.web")

__all__ = ["ERROR_RESPONSES", "PAGE_RESPONSES", "ErrorBody", "error_body", "install"]

_STATUS: dict[type[TrackerError], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    InvalidInput: (422, "invalid"),
    PermissionDenied: (403, "forbidden"),
    Conflict: (409, "conflict"),
}
# The code an HTTPException of each status carries; the same words as the tracker errors use.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    503: "unavailable",
}
MAX_PROBLEMS = 20
# Keys other tools use for what herald calls otherwise; spelling alone would not suggest them.
_SYNONYMS = {
    "values": "options",
    "choices": "options",
    "enum": "options",
    "permission": "read_permission",
    "permissions": "read_permission",
    "kind": "type",
    "mandatory": "required",
    "addresses": "lists",
    "emails": "addresses",
}


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """The one error shape of the API."""

    error: ErrorDetail


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("bad_request / invalid_json: the body is not JSON"),
    401: _doc("unauthorized: no or an unknown bearer token"),
    403: _doc("forbidden: the token may not do this"),
    404: _doc("not_found: no such object, or one the caller may not read"),
    409: _doc("conflict: a duplicate, a stale version, an address taken"),
    413: _doc("too_large: a request body over 1 MiB"),
    422: _doc("invalid: every problem of the body, each naming its field"),
}
#: The HTML pages that mail links open (no token): a page for an unknown or forged link, JSON errors for the
#: rest, as everywhere.
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "an HTML page: the link is unknown, forged or expired",
        "content": {"text/html": {}},
    },
    413: ERROR_RESPONSES[413],
    422: _doc("invalid: a path parameter out of bounds"),
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


def _where(loc: list[Any]) -> str:
    """``["fields", 1, "name"]`` as ``fields[1].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _model_at(model: Any, loc: list[Any]) -> type[BaseModel] | None:
    """The pydantic model found at ``loc`` inside ``model`` (list items and optionals unwrapped)."""

    def unwrap(tp: Any) -> Any:
        while True:
            origin = typing.get_origin(tp)
            if origin in (typing.Union, types.UnionType):
                models = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
                if not models:
                    return tp
                tp = models[0]
            elif origin in (list, tuple, set, frozenset, typing.Annotated):
                tp = typing.get_args(tp)[0]
            else:
                return tp

    current = unwrap(model)
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = unwrap(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _body_model(request: Request) -> type[BaseModel] | None:
    """The pydantic model the endpoint's JSON body is parsed into, if there is one."""
    endpoint = request.scope.get("endpoint")
    try:
        hints = typing.get_type_hints(endpoint) if endpoint is not None else {}
    except Exception:  # an endpoint whose hints do not resolve: no hint, not an error
        return None
    for name, hint in hints.items():
        if name != "return" and isinstance(hint, type) and issubclass(hint, BaseModel):
            return hint
    return None


def _problem(request: Request, err: dict[str, Any]) -> tuple[str, str]:
    loc = [p for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "extra_forbidden" and loc:
        key, parent = loc[-1], loc[:-1]
        where = _where(parent)
        model = _model_at(_body_model(request), parent)
        hint = ""
        if model is not None:
            synonym = _SYNONYMS.get(str(key))
            close = (
                [synonym]
                if synonym in model.model_fields
                else difflib.get_close_matches(str(key), list(model.model_fields), n=1)
            )
            known = ", ".join(model.model_fields)
            hint = f" — did you mean {close[0]!r}?" if close else f" (known keys: {known})"
        return where, f"{where}: unknown key {key!r}{hint}"
    where = _where(loc)
    return where, f"{where}: {err.get('msg', 'invalid')}"


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        err = next(e for e in errors if e.get("type") == "json_invalid")
        position = next((p for p in err.get("loc", ()) if isinstance(p, int)), None)
        at = f" at character {position}" if position is not None else ""
        detail = (err.get("ctx") or {}).get("error", "")
        message = f"the request body is not valid JSON{at}" + (f": {detail}" if detail else "")
        return JSONResponse(error_body("invalid_json", message, "body"), status_code=400)
    problems = [_problem(request, e) for e in errors[:MAX_PROBLEMS]]
    message = "; ".join(text for _, text in problems) or "the request body is not valid"
    if len(errors) > MAX_PROBLEMS:
        message += f"; and {len(errors) - MAX_PROBLEMS} more"
    return JSONResponse(error_body("invalid", message, problems[0][0] if problems else None), status_code=422)


def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
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
