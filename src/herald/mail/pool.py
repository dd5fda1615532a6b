"""A bounded, thread-safe pool of connections to the relay, shared by every delivery of a worker process.

The delivery engine sends the recipients of many changes from many threads at once. Each send borrows one
connection (an :class:`~herald.mail.smtp.SmtpTransport`, which holds one SMTP session) for the length of
one message and gives it back, so a connection carries mail for many changes and is opened once, not per
job. At most ``max_connections`` exist; a send blocks while all are busy. Idle connections are kept, most
recently used first, so a quiet period lets the oldest ones age out: one idle longer than ``max_idle``
(relays drop idle sessions after a minute or so) is closed rather than reused, which saves a send the
trip through a dead socket. A connection that failed at the relay level is closed and replaced by a fresh
one on the next borrow; one whose recipient was merely refused stays (the transport reset the session).

With no ``smtp_host`` the pool wraps one built-in mailbox, which is thread-safe by itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from herald.config import Settings
from herald.mail.errors import MailError
from herald.mail.mailbox import MailboxTransport
from herald.mail.ratelimit import RateLimiter
from herald.mail.smtp import SmtpTransport
from herald.mail.transport import Receipt, Transport, check_envelope

__all__ = ["DEFAULT_MAX_IDLE", "RelayPool", "make_pool"]

DEFAULT_MAX_IDLE = 60.0


class RelayPool(Transport):
    """Up to ``max_connections`` relay connections, reused across sends and jobs; see the module doc.

    ``factory`` makes one connection's transport (default: :class:`SmtpTransport` for ``settings``, or a
    single shared :class:`MailboxTransport` without ``smtp_host``). ``limiter`` is taken once per send,
    after the connection is borrowed and just before the message goes, so the times the relay sees are
    the times the limiter allowed (not bunched up behind a wait for a connection).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_connections: int,
        limiter: RateLimiter | None = None,
        factory: Callable[[], Transport] | None = None,
        max_idle: float = DEFAULT_MAX_IDLE,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self._settings = settings
        self._limiter = limiter
        self._max_idle = max_idle
        self._max = max_connections
        self._shared: Transport | None = None
        if factory is None and not settings.smtp_host:
            self._shared = MailboxTransport(settings)
        self._factory: Callable[[], Transport] = factory or (lambda: SmtpTransport(settings))
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._idle: list[tuple[Transport, float]] = []  # a stack: the most recently used on top
        self._busy = 0
        # Raised by close(): a connection borrowed before it is closed when given back, not kept.
        self._generation = 0

    def __repr__(self) -> str:
        target = self._settings.smtp_host or "mailbox"
        return f"RelayPool({target!r}, max_connections={self._max}, limiter={self._limiter!r})"

    @property
    def max_connections(self) -> int:
        return self._max

    def stats(self) -> dict[str, int]:
        """Connections busy and idle right now (for metrics)."""
        with self._lock:
            return {"busy": self._busy, "idle": len(self._idle), "max": self._max}

    # --- sending -------------------------------------------------------------------------------------

    def send_bytes(
        self,
        raw: bytes,
        sender: str,
        recipient: str,
        *,
        message_id: str | None = None,
        utf8: bool = False,
    ) -> Receipt:
        """Send one message over a borrowed connection; blocks while all connections are busy.

        Raises the transport's classified :class:`MailError`.
        """
        if self._shared is not None:
            if self._limiter is not None:
                self._limiter.acquire()
            return self._shared.send_bytes(raw, sender, recipient, message_id=message_id, utf8=utf8)
        # Checked before borrowing: a bad address must not cost a connection or a rate-limit slot.
        check_envelope(sender, recipient)
        transport, generation = self._borrow()
        healthy = False
        try:
            if self._limiter is not None:
                self._limiter.acquire()
            receipt = transport.send_bytes(raw, sender, recipient, message_id=message_id, utf8=utf8)
            healthy = True
            return receipt
        except MailError as exc:
            healthy = not exc.relay_down
            raise
        finally:
            self._give_back(transport, generation, healthy)

    def probe(self) -> None:
        """Open a fresh connection (EHLO, STARTTLS and AUTH as configured) and QUIT.

        Raises the classified :class:`MailError` (``relay_down`` set) when the relay is unusable. Takes no
        pooled connection and no rate-limit slot.
        """
        transport = self._shared or self._factory()
        try:
            probe = getattr(transport, "probe", None)
            if probe is not None:
                probe()
        finally:
            if transport is not self._shared:
                transport.close()

    def close(self) -> None:
        """Close the idle connections (QUIT); busy ones close when given back. The pool stays usable."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for transport, _ in idle:
            transport.close()
        if self._shared is not None:
            self._shared.close()

    # --- borrowing -----------------------------------------------------------------------------------

    def _borrow(self) -> tuple[Transport, int]:
        self._slots.acquire()
        try:
            now = time.monotonic()
            with self._lock:
                # The stack is ordered by last use: the stale ones are at the bottom.
                cut = 0
                while cut < len(self._idle) and now - self._idle[cut][1] > self._max_idle:
                    cut += 1
                stale, self._idle = self._idle[:cut], self._idle[cut:]
                transport = self._idle.pop()[0] if self._idle else None
                self._busy += 1
                generation = self._generation
            for old, _ in stale:
                old.close()  # QUIT outside the lock: it is a round trip
            if transport is None:
                transport = self._factory()
            return transport, generation
        except BaseException:
            with self._lock:
                self._busy -= 1
            self._slots.release()
            raise

    def _give_back(self, transport: Transport, generation: int, healthy: bool) -> None:
        try:
            if not healthy or generation != self._generation:
                transport.close()  # broken, or the pool was closed meanwhile: the next borrow opens anew
                healthy = False
            with self._lock:
                self._busy -= 1
                if healthy:
                    self._idle.append((transport, time.monotonic()))
        finally:
            self._slots.release()


def make_pool(settings: Settings, *, max_connections: int) -> RelayPool:
    """The pool the settings ask for: SMTP or mailbox, ``smtp_rate_limit`` shared through ``data_dir``."""
    return RelayPool(settings, max_connections=max_connections, limiter=RateLimiter.for_settings(settings))
