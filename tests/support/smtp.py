"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 and a port of the kernel's choosing.

Fixtures (usable from any package's tests, the plugin is listed in ``tests/conftest.py``):

``smtp_server``
    a plain server (no TLS, no AUTH) that records every message it accepts.
``make_smtp_server(security="none"|"starttls"|"tls", auth=("user", "password"), **smtp_kwargs)``
    a factory for the other variants; every server it starts is stopped after the test.
``make_raw_server(greeting=b"...", accept=True)``
    a bare TCP server that sends ``greeting`` (possibly garbage, possibly nothing) and then never answers.
``closed_port``
    a port where connections are refused.
``smtp_tls_files``
    the session's self-signed certificate (made with ``cryptography``, else ``openssl``; the TLS tests
    skip, or fail under CI, when neither is there).

Point herald at a server with ``smtp_settings(server, data_dir=tmp_path)``; for TLS servers pass
``ssl_context=server.client_ssl_context()`` to ``SmtpTransport``. Wait for mail with
``server.wait_for(n)`` (never sleep); script refusals with ``server.refuse_recipient(...)``,
``server.script_mail(...)`` and ``server.script_data(...)`` (which also takes ``DROP`` and ``HANG``);
make it slow and flaky at random with ``server.misbehave(seed=..., delay=(lo, hi), flaky_rate=0.05)``; take it
down and back with ``server.go_down()`` / ``server.come_back()``;
count connections with ``server.connections`` (``max_open_connections`` at once), sends per time window
with ``server.most_in_window(period)``; simulate an idle timeout with ``server.drop_connections()``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from herald.config import Settings, load_settings
from tests.support.services import service_missing

__all__ = [
    "DROP",
    "HANG",
    "RawServer",
    "ReceivedMail",
    "SmtpServer",
    "smtp_settings",
]

HOST = "127.0.0.1"
DEFAULT_WAIT = 5.0
# Scripted DATA "replies" that are not replies: close the connection / never answer, after reading it all.
DROP = "<drop>"
HANG = "<hang>"


@dataclass(frozen=True)
class ReceivedMail:
    """One message the server accepted: the envelope, the bytes as received, and how it came."""

    mail_from: str
    mail_options: tuple[str, ...]
    rcpt_tos: tuple[str, ...]
    data: bytes
    connection: int  # 1 for the first connection of the test, 2 for the next, ...
    tls: bool
    login: str | None

    @functools.cached_property
    def headers(self) -> EmailMessage:
        """The received headers only, parsed once (cheap enough for thousands of mails)."""
        parsed = BytesParser(policy=policy.default).parsebytes(self.data, headersonly=True)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def message_id(self) -> str:
        return str(self.headers["Message-ID"])

    @property
    def changeset_id(self) -> int:
        """herald's ``X-Herald-Changeset-ID``."""
        return int(self.headers["X-Herald-Changeset-ID"])

    def message(self) -> EmailMessage:
        """The received bytes parsed with ``policy.default``."""
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Recorder:
    """The aiosmtpd handler: records what arrives, answers what the test scripted, counts connections.

    Hooks run on the server's event-loop thread; tests read through the condition.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: list[ReceivedMail] = []
        self.refused_data: list[bytes] = []
        self.data_count = 0
        self.data_times: list[float] = []  # time.monotonic() when each DATA was complete
        self.max_open = 0
        self.connections = 0
        self.open: set[SMTP] = set()
        # sessions between an accepted MAIL and the end of DATA -> their connection's number
        self.in_transaction: dict[int, int] = {}
        self.rcpt_replies: dict[str, str] = {}
        self.mail_replies: deque[str] = deque()
        self.data_replies: deque[str] = deque()
        self.pipelining = False
        self.data_delay = 0.0  # seconds each DATA takes before its reply: a slow relay
        # A relay that misbehaves at random (the chaos suite): DATA answered after a delay drawn from
        # ``delay``, and a share ``flaky_rate`` of DATA answered with one of ``flaky_replies`` instead.
        self.rng = random.Random(0)
        self.delay: tuple[float, float] = (0.0, 0.0)
        self.flaky_rate = 0.0
        self.flaky_replies: tuple[str, ...] = ()
        self.flaky_count = 0

    # connection bookkeeping, called by _RecordingSMTP
    def opened(self, proto: _RecordingSMTP) -> None:
        with self.cond:
            self.connections += 1
            proto.number = self.connections
            self.open.add(proto)
            self.max_open = max(self.max_open, len(self.open))
            self.cond.notify_all()

    def closed(self, proto: _RecordingSMTP) -> None:
        with self.cond:
            self.open.discard(proto)
            if proto.session is not None:
                self.in_transaction.pop(id(proto.session), None)
            self.cond.notify_all()

    # aiosmtpd hooks
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads commands one line at a time, so it copes with pipelined ones; it just
            # does not say so. Advertising it lets tests drive herald's pipelined path.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.cond:
            reply = self.mail_replies.popleft() if self.mail_replies else None
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        with self.cond:
            self.in_transaction[id(session)] = server.number
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.cond:
            reply = self.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        with self.cond:
            self.in_transaction.pop(id(session), None)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:  # still in transaction meanwhile: counted in flight
            await asyncio.sleep(self.data_delay)
        with self.cond:
            low, high = self.delay
            delay = self.rng.uniform(low, high) if high > 0 else 0.0
        if delay:
            await asyncio.sleep(delay)
        with self.cond:
            self.in_transaction.pop(id(session), None)
            self.data_count += 1
            self.data_times.append(time.monotonic())
            reply = self.data_replies.popleft() if self.data_replies else "250 2.0.0 OK: queued"
            if reply.startswith("2") and self.flaky_rate and self.rng.random() < self.flaky_rate:
                reply = self.rng.choice(self.flaky_replies)
                self.flaky_count += 1
            if not reply.startswith("2"):
                self.refused_data.append(bytes(envelope.original_content))
            else:
                self.messages.append(self._received(server, session, envelope))
            self.cond.notify_all()
        if reply == DROP:
            server.transport.close()
        if reply in (DROP, HANG):
            await asyncio.Event().wait()  # cancelled by aiosmtpd when the connection goes
        return reply

    @staticmethod
    def _received(server, session, envelope) -> ReceivedMail:
        transport = server.transport
        auth = session.auth_data
        return ReceivedMail(
            mail_from=envelope.mail_from,
            mail_options=tuple(envelope.mail_options),
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content),
            connection=server.number,
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
            login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
        )


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP session, reporting when its connection closes."""

    number = 0

    def __init__(self, recorder: _Recorder, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorder = recorder

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._recorder.closed(self)


class _Controller(Controller):
    """Listens on port 0 and learns the real port before aiosmtpd's own start-up check connects."""

    def __init__(self, recorder: _Recorder, port: int = 0, **kwargs: Any) -> None:
        super().__init__(recorder, hostname=HOST, port=port, **kwargs)
        self.recorder = recorder
        self.start_kwargs = kwargs

    def factory(self) -> SMTP:
        # Called once per accepted connection (a STARTTLS upgrade keeps its session object).
        proto = _RecordingSMTP(self.recorder, self.handler, **self.SMTP_kwargs)
        self.recorder.opened(proto)
        return proto

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class SmtpServer:
    """A running aiosmtpd server and what it received. Methods are safe to call from the test thread."""

    host: str
    port: int
    security: str
    user: str | None
    password: str | None
    ca_file: Path | None
    _controller: _Controller = field(repr=False)

    @property
    def _rec(self) -> _Recorder:
        return self._controller.recorder

    @property
    def messages(self) -> list[ReceivedMail]:
        """The messages accepted so far, in order."""
        with self._rec.cond:
            return list(self._rec.messages)

    @property
    def refused_data(self) -> list[bytes]:
        """Message bodies whose DATA was answered with a scripted refusal."""
        with self._rec.cond:
            return list(self._rec.refused_data)

    @property
    def connections(self) -> int:
        """How many connections clients opened (aiosmtpd's own start-up probe not counted)."""
        with self._rec.cond:
            return self._rec.connections

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        with self._rec.cond:
            return len(self._rec.open)

    @property
    def data_count(self) -> int:
        """How many messages reached the end of DATA, whatever the reply."""
        with self._rec.cond:
            return self._rec.data_count

    @property
    def max_open_connections(self) -> int:
        """The most client connections that were open at once."""
        with self._rec.cond:
            return self._rec.max_open

    def most_in_window(self, period: float) -> int:
        """The most messages whose DATA completed within any ``period`` seconds (a relay's rate count)."""
        with self._rec.cond:
            times = sorted(self._rec.data_times)
        most, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= period:
                start += 1
            most = max(most, end - start + 1)
        return most

    @property
    def open_transactions(self) -> int:
        """Mails begun (MAIL accepted) whose DATA has not ended: a client frozen now may still finish them."""
        with self._rec.cond:
            return len(self._rec.in_transaction)

    def connections_from(self, ports: Collection[int]) -> frozenset[int]:
        """The numbers of the open connections whose client port is one of ``ports`` (a process's
        sockets): :attr:`ReceivedMail.connection` tells what came over them."""
        with self._rec.cond:
            return frozenset(
                proto.number
                for proto in self._rec.open
                if proto.session is not None
                and isinstance(proto.session.peer, tuple)
                and proto.session.peer[1] in ports
            )

    def open_transactions_on(self, connections: Collection[int]) -> int:
        """Like :attr:`open_transactions`, counting only those on the given connection numbers."""
        with self._rec.cond:
            return sum(1 for number in self._rec.in_transaction.values() if number in connections)

    def wait_closed(self, connections: Collection[int], timeout: float = DEFAULT_WAIT) -> None:
        """Block until none of the given connections is open (e.g. their client was killed): from then
        on nothing more can arrive over them."""
        with self._rec.cond:
            if not self._rec.cond.wait_for(
                lambda: not any(proto.number in connections for proto in self._rec.open), timeout
            ):
                pytest.fail(f"connection(s) {sorted(connections)} still open after {timeout}s")

    def wait_disconnected(self, timeout: float = DEFAULT_WAIT) -> None:
        """Block until no client connection is open (e.g. after the client's QUIT)."""
        with self._rec.cond:
            if not self._rec.cond.wait_for(lambda: not self._rec.open, timeout):
                pytest.fail(f"{len(self._rec.open)} client connection(s) still open after {timeout}s")

    def wait_for(self, count: int, timeout: float = DEFAULT_WAIT) -> list[ReceivedMail]:
        """Block until at least ``count`` messages arrived; returns them all. Fails after ``timeout``."""
        with self._rec.cond:
            if not self._rec.cond.wait_for(lambda: len(self._rec.messages) >= count, timeout):
                pytest.fail(f"expected {count} message(s) within {timeout}s, got {len(self._rec.messages)}")
            return list(self._rec.messages)

    def slow_data(self, seconds: float) -> None:
        """Answer every DATA only after ``seconds`` (a slow relay keeps deliveries in flight)."""
        self._rec.data_delay = seconds

    def refuse_recipient(self, address: str, reply: str = "550 5.1.1 <{address}>: no such user") -> None:
        """Answer RCPT TO for ``address`` with ``reply`` (e.g. ``"450 mailbox busy"``) from now on."""
        with self._rec.cond:
            self._rec.rcpt_replies[address.lower()] = reply.format(address=address)

    def accept_recipient(self, address: str) -> None:
        """Stop refusing ``address``: its RCPT TO is accepted again."""
        with self._rec.cond:
            self._rec.rcpt_replies.pop(address.lower(), None)

    def script_mail(self, *replies: str) -> None:
        """The next MAIL FROM commands get these replies, in order; later ones get 250."""
        with self._rec.cond:
            self._rec.mail_replies.extend(replies)

    def script_data(self, *replies: str) -> None:
        """The next messages' DATA get these final replies, in order (e.g. "451 ...", then "250 OK").

        ``DROP`` closes the connection instead of answering, ``HANG`` never answers.
        """
        with self._rec.cond:
            self._rec.data_replies.extend(replies)

    def misbehave(
        self,
        *,
        seed: int,
        delay: tuple[float, float] = (0.0, 0.0),
        flaky_rate: float = 0.0,
        flaky_replies: tuple[str, ...] = ("451 4.3.0 try again later", "421 4.3.2 service shutting down"),
    ) -> None:
        """From now on: answer each DATA after a delay drawn uniformly from ``delay`` (seconds; a slow
        relay), and answer a share ``flaky_rate`` of them with one of ``flaky_replies`` (drawn with a
        ``random.Random(seed)``) instead of accepting the message. Scripted replies come first."""
        with self._rec.cond:
            self._rec.rng = random.Random(seed)
            self._rec.delay = delay
            self._rec.flaky_rate = flaky_rate
            self._rec.flaky_replies = flaky_replies

    @property
    def flaky_count(self) -> int:
        """How many DATA were refused by :meth:`misbehave`'s random replies."""
        with self._rec.cond:
            return self._rec.flaky_count

    def drop_connections(self, timeout: float = DEFAULT_WAIT) -> None:
        """Close every client connection from the server side, as an idle timeout would; waits until gone."""
        rec = self._rec

        def close_all() -> None:
            for proto in list(rec.open):
                if proto.transport is not None:
                    proto.transport.close()

        self._controller.loop.call_soon_threadsafe(close_all)
        self.wait_disconnected(timeout)

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's self-signed certificate (and verifies the host)."""
        assert self.ca_file is not None, "not a TLS server"
        return ssl.create_default_context(cafile=str(self.ca_file))

    def stop(self) -> None:
        if self._controller.loop.is_running():
            self._controller.stop()

    def go_down(self, timeout: float = 30.0) -> None:
        """An outage: stop listening (new connections are refused), then drop every open connection."""
        controller = self._controller
        closed = threading.Event()

        def stop_listening() -> None:
            if controller.server is not None:
                controller.server.close()  # first: clients would reconnect while the others are dropped
            closed.set()

        controller.loop.call_soon_threadsafe(stop_listening)
        closed.wait(timeout)
        self.drop_connections(timeout)
        controller.stop()

    def come_back(self) -> None:
        """End an outage: listen again on the same port, keeping what was received so far."""
        old = self._controller
        controller = _Controller(old.recorder, port=self.port, **old.start_kwargs)
        controller.start()
        self._controller = controller


def smtp_settings(server: SmtpServer, **overrides: object) -> Settings:
    """herald settings pointing at ``server`` (with its credentials, if it wants AUTH).

    Keyword arguments override any setting (``data_dir=tmp_path``, ``smtp_timeout=1``); ``None`` removes
    one. Built through ``load_settings(env=...)``, so the values are validated as in production.
    """
    values: dict[str, object] = {
        "smtp_host": server.host,
        "smtp_port": server.port,
        "smtp_security": server.security,
        "smtp_user": server.user,
        "smtp_password": server.password,
        "smtp_timeout": 5,
    }
    values.update(overrides)
    env = {f"HERALD_{key.upper()}": _env_value(value) for key, value in values.items() if value is not None}
    return load_settings(env=env)


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- TLS certificate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_self_signed(directory: Path) -> TlsFiles | None:
    """A self-signed certificate for localhost and 127.0.0.1: with ``cryptography``, else ``openssl``."""
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    if importlib.util.find_spec("cryptography") is not None:
        _self_signed_with_cryptography(files)
        return files
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(files.key), "-out", str(files.cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return files


def _self_signed_with_cryptography(files: TlsFiles) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@pytest.fixture(scope="session")
def smtp_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate shared by the session's TLS servers; skips if it cannot be made."""
    files = make_self_signed(tmp_path_factory.mktemp("smtp-tls"))
    if files is None:
        service_missing("cannot make a TLS certificate: neither the cryptography package nor openssl")
    assert files is not None
    return files


# --- fixtures ----------------------------------------------------------------------------------------


def _password_checker(user: str, password: str) -> Callable[..., AuthResult]:
    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    return authenticate


@pytest.fixture
def make_smtp_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., SmtpServer]]:
    """Start aiosmtpd servers on demand; all are stopped when the test ends.

    ``security``: ``none``, ``starttls`` (STARTTLS offered and required) or ``tls`` (implicit TLS).
    ``auth``: ``(user, password)`` to require AUTH (allowed without TLS when ``security`` is ``none``).
    ``pipelining``: advertise PIPELINING (RFC 2920) in the EHLO reply.
    Other keywords go to aiosmtpd's ``SMTP`` (e.g. ``authenticator=``, ``data_size_limit=``).
    """
    servers: list[SmtpServer] = []

    def start(
        *,
        security: str = "none",
        auth: tuple[str, str] | None = None,
        pipelining: bool = False,
        **smtp_kwargs: Any,
    ) -> SmtpServer:
        kwargs: dict[str, Any] = {"ready_timeout": 10.0, **smtp_kwargs}
        ca_file = None
        if security in ("starttls", "tls"):
            tls: TlsFiles = request.getfixturevalue("smtp_tls_files")
            ca_file = tls.cert
            if security == "starttls":
                kwargs.update(tls_context=tls.server_context(), require_starttls=True)
            else:
                kwargs["ssl_context"] = tls.server_context()
        elif security != "none":
            raise ValueError(f"unknown security {security!r}")
        if auth is not None:
            kwargs.setdefault("authenticator", _password_checker(*auth))
            kwargs["auth_required"] = True
            # aiosmtpd refuses AUTH outside STARTTLS unless told otherwise (it does not see implicit TLS).
            kwargs["auth_require_tls"] = security == "starttls"
        recorder = _Recorder()
        recorder.pipelining = pipelining
        controller = _Controller(recorder, **kwargs)
        controller.start()
        # Forget aiosmtpd's start-up probe: tests count their own connections only.
        with controller.recorder.cond:
            controller.recorder.connections = 0
            controller.recorder.open.clear()
        server = SmtpServer(
            host=HOST,
            port=controller.port,
            security=security,
            user=auth[0] if auth else None,
            password=auth[1] if auth else None,
            ca_file=ca_file,
            _controller=controller,
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(make_smtp_server: Callable[..., SmtpServer]) -> SmtpServer:
    """A plain SMTP server (no TLS, no AUTH) recording what it receives."""
    return make_smtp_server()


# --- a server that misbehaves ------------------------------------------------------------------------


@dataclass
class RawServer:
    """A TCP listener that greets with fixed bytes, then reads and never answers."""

    host: str
    port: int
    accepted: threading.Event
    _sock: socket.socket = field(repr=False)
    _stop: threading.Event = field(repr=False)
    _thread: threading.Thread | None = field(repr=False)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()


def _serve_raw(
    sock: socket.socket, greeting: bytes, accepted: threading.Event, stop: threading.Event
) -> None:
    conns: list[socket.socket] = []
    sock.settimeout(0.05)
    try:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            conn.sendall(greeting)
            accepted.set()
    finally:
        for conn in conns:
            conn.close()


@pytest.fixture
def make_raw_server() -> Iterator[Callable[..., RawServer]]:
    """Start misbehaving servers: ``make_raw_server(b"garbage\\r\\n")``, or ``accept=False`` for a port
    whose connections the kernel completes but nobody ever reads (the silent server)."""
    servers: list[RawServer] = []

    def start(greeting: bytes = b"", *, accept: bool = True) -> RawServer:
        sock = socket.socket()
        sock.bind((HOST, 0))
        sock.listen(16)
        accepted, stop = threading.Event(), threading.Event()
        thread = None
        if accept:
            thread = threading.Thread(
                target=_serve_raw, args=(sock, greeting, accepted, stop), name="raw-smtp", daemon=True
            )
            thread.start()
        server = RawServer(HOST, sock.getsockname()[1], accepted, sock, stop, thread)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and nobody else can take it."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]
