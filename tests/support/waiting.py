"""Waiting on an event from outside: poll a cheap predicate until it holds, fail the test at a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_until(predicate: Callable[[], Any], what: str = "condition", timeout: float = 10.0) -> Any:
    """Return ``predicate()``'s first truthy value; fail the test after ``timeout`` seconds.

    Used where no event can be subscribed to (a row in another process's database, a subprocess's state,
    a server's recorder); the 10 ms interval keeps the wait short without spinning.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
