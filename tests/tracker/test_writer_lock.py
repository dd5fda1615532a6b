"""The host-wide SQLite writer lock: one writer at a time across processes, handed over quickly, and an
error (not a stall) when a holder keeps it past SQLite's busy timeout."""

from __future__ import annotations

import threading
import time

import pytest

from herald.tracker import db as dbmod
from herald.tracker.db import WriterLock


def test_a_second_holder_waits_then_gets_the_lock_when_it_is_released(tmp_path):
    path = str(tmp_path / "w.lock")
    first, second = WriterLock(path), WriterLock(path)  # two open files: like two processes
    got = threading.Event()

    def take() -> None:
        with second:
            got.set()

    with first:
        waiter = threading.Thread(target=take)
        waiter.start()
        assert not got.wait(0.2)
    assert got.wait(2.0)
    waiter.join()


def test_a_holder_that_never_lets_go_ends_in_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod, "WRITE_LOCK_TIMEOUT_SECONDS", 0.2)
    path = str(tmp_path / "w.lock")
    holder, waiter = WriterLock(path), WriterLock(path)
    with holder:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="write lock"), waiter:
            pass
        assert time.monotonic() - started >= 0.2
    with waiter:  # usable again once the holder let go
        pass


def test_the_lock_is_reentrant_within_a_thread(tmp_path):
    lock = WriterLock(str(tmp_path / "w.lock"))
    with lock, lock:
        pass
