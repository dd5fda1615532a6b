"""How a test reacts when a real service it needs is missing.

On a newcomer's machine it skips with the reason; under CI (``CI=true``) a missing service is a failure,
because a green run that skipped its Redis or PostgreSQL tests proves nothing.
"""

from __future__ import annotations

import os
import socket

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def service_missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"required service missing under CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
