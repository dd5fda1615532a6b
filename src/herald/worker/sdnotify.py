"""systemd's notify protocol, for units with ``Type=notify`` and ``WatchdogSec=``: ``READY=1`` once the
process is up, then ``WATCHDOG=1`` from its main loop, so that a loop that stops turning (a hang, a
deadlock, SIGSTOP) gets the process killed and restarted by systemd. A no-op outside systemd."""

from __future__ import annotations

import os
import socket
import time

__all__ = ["Notifier"]


class Notifier:
    """Sends to ``$NOTIFY_SOCKET`` (read when built, not at import); ``watchdog()`` at most once a second."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._last = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, state: str) -> bool:
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(state.encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def watchdog(self) -> None:
        now = time.monotonic()
        if self._address and now - self._last >= 1.0:
            self._last = now
            self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
