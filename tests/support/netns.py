"""Worker "hosts" in Linux network namespaces, each linked to this machine by a veth pair.

A namespace gets its own /30 (``10.<a>.<b>.0``: ``.1`` on this machine's end, ``.2`` inside) and reaches the
services the tests run on loopback (PostgreSQL, redis-server, aiosmtpd) through ``socat`` forwarders bound to
its ``.1`` address, so nothing the tests start listens beyond loopback and this machine's ends of the veths.
:meth:`Namespace.cut` takes the machine's end of the link down: packets are dropped silently, as in a network
cut (connections hang, nothing is refused), and :meth:`Namespace.restore` brings it back, the connections
resuming where they stopped.

Needs root, ``ip`` (iproute2) and ``socat``; :func:`namespaces_missing` says why not. Every namespace,
veth and forwarder is removed on teardown, whatever the test did.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.services import service_missing

STARTUP_SECONDS = 10.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def namespaces_missing() -> str | None:
    """Why network namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "socat"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            return f"{tool} is not installed"
    probe = f"hprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


@dataclass
class Namespace:
    """One worker host: a namespace, its veth pair and its forwarders."""

    name: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str
    forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def forward(self, port: int) -> str:
        """Make ``127.0.0.1:port`` of this machine reachable from the namespace at ``<host_addr>:port``;
        returns that address."""
        process = subprocess.Popen(
            [
                "socat",
                # TCP keepalive towards the namespace: a forwarder whose peer vanished closes both sides
                # within seconds, as a server's own keepalive would end the session of a vanished host.
                # Keepalive probes are not sent while data towards the namespace is unacknowledged (the
                # server answered a query after the cut): there TCP_USER_TIMEOUT (level 6, option 18,
                # ms) ends it, as the server's own tcp_user_timeout would (herald's SESSION_LIMITS).
                f"TCP-LISTEN:{port},bind={self.host_addr},fork,reuseaddr,keepalive,keepidle=1,"
                "keepintvl=1,keepcnt=2,sockopt-int=6:18:3000",
                f"TCP:127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.forwarders.append(process)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:  # no event to wait on from outside: try until it accepts
            if process.poll() is not None:
                raise RuntimeError(f"socat for port {port} exited with {process.returncode}")
            try:
                with socket.create_connection((self.host_addr, port), timeout=1):
                    return self.host_addr
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def cut(self) -> None:
        """Take the link down (this machine's end): the host vanishes from the network."""
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def close(self) -> None:
        for process in self.forwarders:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.forwarders:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        _ip("link", "delete", self.host_if, check=False)  # removes its peer too
        _ip("netns", "delete", self.name, check=False)


class Namespaces:
    """Makes namespaces on demand; removes them all on :meth:`close`."""

    def __init__(self) -> None:
        self.made: list[Namespace] = []
        self._tag = secrets.token_hex(2)
        self._subnet = secrets.randbelow(200) + 20  # 10.<subnet>.<i*4>.0/30: unlikely to clash

    def make(self) -> Namespace:
        i = len(self.made)
        name = f"herald-{self._tag}-{i}"
        host_if, ns_if = f"hv{self._tag}{i}h", f"hv{self._tag}{i}n"
        base = f"10.{self._subnet}.{4 * i}"
        ns = Namespace(name, host_if, ns_if, f"{base}.1", f"{base}.2")
        self.made.append(ns)  # before creating anything: close() removes whatever got made
        _ip("netns", "add", name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{ns.host_addr}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{ns.ns_addr}/30", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        return ns

    def close(self) -> None:
        for ns in reversed(self.made):
            ns.close()


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    """Network namespaces for worker hosts. Where they cannot be made the test is skipped (the SIGSTOP
    variant stands in for it), except under CI as root, where a missing ``ip`` or ``socat`` fails it."""
    reason = namespaces_missing()
    if reason is not None:
        if os.geteuid() == 0:
            service_missing(reason)
        pytest.skip(f"{reason}: the SIGSTOP variant runs instead")
    made = Namespaces()
    try:
        yield made
    finally:
        made.close()
