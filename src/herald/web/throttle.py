"""Failed sign-ins per client, so the admin token cannot be guessed at line speed.

A client (its address as the ASGI server sees it) that fails ``max_failures`` times within ``window``
seconds is refused until the oldest of those failures leaves the window. Memory is bounded: past
``max_clients`` tracked clients the one seen least recently is forgotten.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["LoginThrottle"]


class LoginThrottle:
    """Counts failures per client in a sliding window. Not thread-safe: used from the event loop only."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float]:
        now = self._clock()
        times = self._failures.get(client)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[client]
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds this client must wait before trying again, or None if it may try now."""
        times = self._recent(client)
        if len(times) < self.max_failures:
            return None
        return max(1, math.ceil(times[0] + self.window - self._clock()))

    def failed(self, client: str) -> None:
        """Record one failed attempt."""
        times = self._recent(client)
        times.append(self._clock())
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """A good sign-in clears the client's record."""
        self._failures.pop(client, None)
