"""The listening socket of ``herald up`` / ``serve``, bound before anything else starts.

Binding first means a busy port is one clear line and a non-zero exit, before the banner, the demo seed or
the worker supervisor; it also tells the real port when ``--port 0`` asks the system for one. uvicorn then
serves on this very socket, so nothing can take the port in between.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
from urllib.parse import urlsplit

from herald.config import Settings

#: Hosts that mean "every address": not something to put in a mail link.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


class ListenError(Exception):
    """The address cannot be listened on; the message says why and what to do."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port), or :class:`ListenError`."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror:
        raise ListenError(
            f"cannot listen on {host!r}: not an address or a name this machine resolves — pass --host with "
            "one of its addresses (127.0.0.1, or 0.0.0.0 for all)"
        ) from None
    sock = socket.socket(family, kind, proto)
    # As uvicorn does: a restart may reuse the port while old connections sit in TIME_WAIT. Linux still
    # refuses the bind while another socket listens on it, which is the case we must report.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ListenError(_explain(exc, host, port)) from None
    sock.set_inheritable(False)  # the worker supervisor must not hold the web port open
    return sock


def _explain(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use — stop the other process or pass --port N"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs privileges (ports below 1024) — pass --port N above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine — pass --host with one of its addresses"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def follow_address(settings: Settings, host: str, port: int, *, mail_domain: bool) -> Settings:
    """``settings`` with ``base_url`` pointing at host:port, and ``mail_domain`` at its host if asked.

    The caller decides whether they may move (not set explicitly). A wildcard host keeps the host of the
    current ``base_url``: mail links need a name the reader can reach, not ``0.0.0.0``.
    """
    parts = urlsplit(settings.base_url)
    name = (parts.hostname or "127.0.0.1") if host in WILDCARD_HOSTS else host.strip("[]")
    netloc = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    changes = {"base_url": parts._replace(netloc=netloc).geturl()}
    if mail_domain:
        changes["mail_domain"] = name.lower()
    return dataclasses.replace(settings, **changes)
