"""``smtp_rate_limit`` across every worker process of a host: a sliding-window log in a locked file.

A relay that allows "30/min" counts what it receives in any minute, so the limiter keeps the times of the
last ``count`` sends and lets a send go only once the oldest of them is ``period`` old: then no window of
``period`` seconds ever holds more than ``count`` sends (a token bucket would allow twice that across a
window edge). The times live in a small file under ``data_dir`` as a ring of ``count`` doubles; each
decision reads one slot and writes one, under ``fcntl.flock``, so its cost does not grow with ``count``.

Why a file and not Redis: the limit must hold with the SQL queue too (no Redis at all), and the processes
that share it are on one host by definition (the limit is per host, like ``smtp_max_connections``).

A blocked :meth:`RateLimiter.acquire` reserves its time in the ring and sleeps until then, outside the
lock: waiters are served in order and nobody polls. Times are ``time.monotonic()``, which on Linux is one
clock for all processes and never steps (a wall clock set back an hour would stall sending for an hour);
it restarts at boot, so the file records the kernel's boot id and a ring from an earlier boot is dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from herald.config import RateLimit, Settings

__all__ = ["RateLimiter"]

_MAGIC = b"HRLDRAT2"
# magic, count, period, boot id, head (index of the oldest slot), padding to 48 bytes; then ``count``
# doubles, the monotonic times of the last ``count`` sends (or reservations), oldest at ``head``.
_HEADER = struct.Struct("<8sId16sQ4x")
_SLOT = struct.Struct("<d")
STATE_FILE = "smtp_rate_limit.state"


class RateLimiter:
    """At most ``limit.count`` sends in any ``limit.period`` seconds, among all users of ``path``.

    Thread-safe and process-safe; safe across ``fork`` (the file is reopened in the child).
    """

    def __init__(
        self,
        limit: RateLimit,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit.count < 1 or limit.period <= 0:
            raise ValueError(f"rate limit {limit} must allow at least one send per positive period")
        self._limit = limit
        self._path = Path(path)
        self._clock = clock
        self._boot = _boot_id()
        self._sleep = sleep
        # flock belongs to the open file description, which all threads share: a thread lock goes first.
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> RateLimiter | None:
        """The limiter ``settings.smtp_rate_limit`` asks for, with its state in ``data_dir``; else None."""
        if settings.smtp_rate_limit is None:
            return None
        return cls(settings.smtp_rate_limit, Path(settings.data_dir) / STATE_FILE)

    def __repr__(self) -> str:
        return f"RateLimiter({str(self._limit)!r}, {str(self._path)!r})"

    @property
    def limit(self) -> RateLimit:
        return self._limit

    def acquire(self) -> None:
        """Block until a send may happen, then count it. Sleeps the computed time once, no polling."""
        with self._locked() as fd:
            now = self._clock()
            allowed, head = self._allowed_at(fd, now)
            at = max(now, allowed)
            self._record(fd, head, at)
        if at > now:
            self._sleep(at - now)

    def try_acquire(self) -> float:
        """0 if a send may happen now (and count it), else the seconds to wait (and count nothing)."""
        with self._locked() as fd:
            now = self._clock()
            at, head = self._allowed_at(fd, now)
            if at > now:
                return at - now
            self._record(fd, head, now)
            return 0.0

    def close(self) -> None:
        """Close the state file; a later call reopens it."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    # --- the ring ------------------------------------------------------------------------------------

    def _allowed_at(self, fd: int, now: float) -> tuple[float, int]:
        """When the next send may go (the oldest slot plus ``period``, never before the newest slot),
        and the index of the oldest slot, the one that send will take."""
        head = self._head(fd)
        oldest = self._slot(fd, head)
        # Never before the newest: reservations stay in order, which is what bounds every window.
        newest = self._slot(fd, (head - 1) % self._limit.count)
        return max(oldest + self._limit.period, newest), head

    def _record(self, fd: int, head: int, at: float) -> None:
        os.pwrite(fd, _SLOT.pack(at), _HEADER.size + head * _SLOT.size)
        self._write_header(fd, (head + 1) % self._limit.count)

    def _head(self, fd: int) -> int:
        data = os.pread(fd, _HEADER.size, 0)
        if len(data) == _HEADER.size:
            magic, count, period, boot, head = _HEADER.unpack(data)
            limit = self._limit
            if (magic, count, period, boot) == (
                _MAGIC,
                limit.count,
                limit.period,
                self._boot,
            ) and head < count:
                return int(head)
        # New, foreign, from an earlier boot, or rewritten by a process configured with another limit.
        os.ftruncate(fd, 0)
        os.ftruncate(fd, _HEADER.size + self._limit.count * _SLOT.size)
        # Every slot "long ago", so the first ``count`` sends go at once (zeros would not do: a young
        # boot's monotonic clock is smaller than ``period``). One write; a huge count is rare.
        os.pwrite(fd, _SLOT.pack(-math.inf) * self._limit.count, _HEADER.size)
        self._write_header(fd, 0)
        return 0

    def _slot(self, fd: int, index: int) -> float:
        data = os.pread(fd, _SLOT.size, _HEADER.size + index * _SLOT.size)
        return _SLOT.unpack(data)[0] if len(data) == _SLOT.size else -math.inf

    def _write_header(self, fd: int, head: int) -> None:
        limit = self._limit
        os.pwrite(fd, _HEADER.pack(_MAGIC, limit.count, limit.period, self._boot, head), 0)

    # --- locking -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The state file, locked against other threads and other processes for one decision."""
        with self._lock:
            if self._fd is None or self._pid != os.getpid():
                # After a fork the inherited descriptor would share the parent's lock: open our own.
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield self._fd
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


def _boot_id() -> bytes:
    """The kernel's id of this boot (16 bytes), or zeros where there is none to read."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return bytes.fromhex(text.replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return bytes(16)
