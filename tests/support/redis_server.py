"""A real ``redis-server`` for the test session: password, appendonly, private directory, free port.

Tests share the server and isolate themselves by key namespace (``redis_namespace``); nothing here
ever runs FLUSHALL. A test may stop, start or restart the server; the namespace fixture makes sure it
is running again for the next test.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.services import free_port, service_missing

STARTUP_SECONDS = 10.0


class RedisServer:
    """One redis-server process, restartable on the same port and directory (so its AOF survives)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.dir = directory
        self.port = free_port()
        self.password = secrets.token_hex(20)  # 40 characters
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self) -> redis.Redis:
        """A plain client for test set-up and inspection."""
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self, *, fresh: bool = False) -> None:
        """Start (if not running). ``fresh``: remove what it had persisted first (append-only file and
        snapshot), so it comes back empty, as a server without persistence does after a crash."""
        if self.running:
            return
        if fresh:
            for path in [self.dir / "appendonlydir", self.dir / "dump.rdb"]:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        log = (self.dir / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--requirepass", self.password,
                "--appendonly", "yes",
                "--dir", str(self.dir),
                "--save", "",
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        # Startup (and AOF loading) has no event to wait on from outside: ask until it answers.
        deadline = time.monotonic() + STARTUP_SECONDS
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)
        try:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}; see {self.dir}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:  # includes BusyLoadingError while reading the AOF
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer within {STARTUP_SECONDS}s")
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): Redis flushes its AOF first, as on a clean shutdown."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as a crash: what the append-only file had not written yet (up to a second) is lost."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's redis-server (skipped, or failed under CI, if the binary is missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server is not on PATH")
    assert binary is not None
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (to kill, empty or restart at will), stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server is not on PATH")
    assert binary is not None
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(binary, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_namespace(redis_server: RedisServer) -> Iterator[str]:
    """A key namespace of this test's own; its keys are deleted afterwards."""
    namespace = f"t-{uuid.uuid4().hex[:12]}"
    yield namespace
    redis_server.start()  # a test may have left it stopped
    client = redis_server.client()
    try:
        keys = list(client.scan_iter(match=f"{{{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
