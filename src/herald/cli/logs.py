"""Logging for every herald process: one file per role under ``log_dir``, or stderr, never both.

The front end writes ``herald.log`` (with the ``Notification`` Start/End lines an admin reads to decide on
backend notifications); workers and the supervisor write ``worker.log``. Where the lines go:

- ``log_dir`` a directory (the default, ``data_dir/log``): every line goes to the file (rotated at
  20 MiB) and only there. When stderr is a terminal (``herald up`` in the foreground), warnings and
  errors are *also* shown on it, so a person watching sees what goes wrong; the file stays the record;
- ``log_dir = "-"``: every line goes to stderr and no file is written (systemd's journal, containers).

Each line is written once. ``log_format = "text"`` (the default) writes
``2026-12-07 18:00:00,123 INFO [herald.notification] Notification: Start notification changeset_id=7 ...``;
``"json"`` writes one JSON object per line with ``ts``, ``level``, ``logger``, ``message`` and every
``key=value`` pair of the message as a field of its own (``changeset_id``, ``job_id``, ``recipient``,
``reply``...), for admins who ship logs. Lines carry ids and timings, never secrets.
"""

from __future__ import annotations

import ast
import json
import logging
import logging.handlers
import re
import sys
import time
from typing import Any

from herald.config import Settings

__all__ = ["FORMAT", "JsonFormatter", "setup_logging"]

FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
#: The short form of the warnings shown on a terminal next to the file.
TERMINAL_FORMAT = "%(levelname)s [%(name)s] %(message)s"
_installed: list[logging.Handler] = []

# ``key=value`` in a message: a value is a Python repr'd string ('...' or "..."), or runs to the next space,
# comma or semicolon.
_PAIR = re.compile(r"""(?<![\w.])([a-z][a-z_]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s,;]+)""")
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+\.\d+")
#: Fields of a LogRecord that are not "extras" passed by the caller.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _value(text: str) -> Any:
    if text[:1] in "'\"":
        if "\\" not in text:  # the common case: a repr without escapes is its text between the quotes
            return text[1:-1]
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    if (text.isascii() and text.isdigit()) or _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
    ``message``, the message's ``key=value`` pairs, extras passed with ``extra=``, and ``exc_info`` as
    text when there is an exception."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        ms = int(record.msecs)
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, raw in _PAIR.findall(message):
            if key not in out:
                out[key] = _value(raw)
        for key in record.__dict__.keys() - _RECORD_FIELDS:  # extras passed with extra=
            if not key.startswith("_") and key not in out:
                value = record.__dict__[key]
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def _formatter(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else logging.Formatter(FORMAT)


def setup_logging(settings: Settings, filename: str) -> None:
    """Send herald's loggers where the module docstring says: ``log_dir/filename`` or stderr."""
    root = logging.getLogger("herald")
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()
    handlers: list[logging.Handler] = []
    if settings.log_to_stderr:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(_formatter(settings))
        handlers.append(stream)
    else:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            settings.log_dir / filename, maxBytes=20 << 20, backupCount=5, encoding="utf-8"
        )
        file_handler.setFormatter(_formatter(settings))
        handlers.append(file_handler)
        if _is_terminal(sys.stderr):
            terminal = logging.StreamHandler(sys.stderr)
            terminal.setLevel(logging.WARNING)
            terminal.setFormatter(logging.Formatter(TERMINAL_FORMAT))
            handlers.append(terminal)
    for handler in handlers:
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(settings.logger_level.upper())
    root.propagate = False


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
