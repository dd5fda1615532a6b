"""Logging for every herald process: one file per role under ``log_dir`` plus stderr.

The front end writes ``herald.log`` (with the ``Notification`` Start/End lines an admin reads to decide on
backend notifications); workers and the supervisor write ``worker.log``. Lines carry ids and timings, never
secrets.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from herald.config import Settings

FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
_installed: list[logging.Handler] = []


def setup_logging(settings: Settings, filename: str, *, stderr: bool = True) -> None:
    """Send herald's loggers to ``log_dir/filename`` (rotated at 20 MiB) and, optionally, to stderr."""
    root = logging.getLogger("herald")
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(
        settings.log_dir / filename, maxBytes=20 << 20, backupCount=5, encoding="utf-8"
    )
    handlers: list[logging.Handler] = [file_handler]
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter(FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(settings.logger_level.upper())
    root.propagate = False
