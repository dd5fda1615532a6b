"""The systemd notify protocol against a real datagram socket, as systemd listens on it."""

from __future__ import annotations

import socket
from pathlib import Path

from herald.worker.sdnotify import Notifier


def test_ready_watchdog_and_stopping_reach_the_socket(tmp_path: Path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.enabled and notifier.ready()
        assert server.recv(100) == b"READY=1"
        notifier.watchdog()
        notifier.watchdog()  # at most once a second: the second is swallowed
        notifier.stopping()
        assert server.recv(100) == b"WATCHDOG=1"
        assert server.recv(100) == b"STOPPING=1"


def test_outside_systemd_it_does_nothing():
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready()
    notifier.watchdog()


def test_a_socket_that_is_gone_is_not_an_error(tmp_path: Path):
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")}).ready()
