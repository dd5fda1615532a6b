"""A real PgBouncer (Debian's ``pgbouncer``) in transaction mode in front of the machine's PostgreSQL.

Started per test on a free port, for the test's own database (``pg_url``). PgBouncer refuses to run as root,
so under root (CI) it runs as the ``postgres`` user, from a directory of its own that it may write.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.support.services import free_port, service_missing

STARTUP_SECONDS = 10.0


class PgBouncer:
    """One pgbouncer process in ``pool_mode = transaction`` forwarding every database to ``target``."""

    def __init__(self, binary: str, target_url: str) -> None:
        self.binary = binary
        self.target = make_url(target_url)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="herald-pgbouncer-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The test database's URL through PgBouncer."""
        return self.target.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def start(self) -> None:
        user = self.target.username or "postgres"
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.target.host or '127.0.0.1'} port={self.target.port or 5432} user={user}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "auth_type = any\n"
            "pool_mode = transaction\n"
            "unix_socket_dir =\n"
            "default_pool_size = 20\n"
            "max_client_conn = 200\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        command = [self.binary, str(ini)]
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                service_missing("pgbouncer refuses root and there is no 'postgres' user to run it as")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            os.chown(ini, account.pw_uid, account.pw_gid)
            command = [self.binary, "-u", "postgres", str(ini)]
        log = (self.dir / "pgbouncer.out").open("ab")
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        # No event to wait on from outside: ask until it answers.
        deadline = time.monotonic() + STARTUP_SECONDS
        conninfo = (
            f"host=127.0.0.1 port={self.port} dbname={self.target.database} user={self.target.username}"
        )
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {(self.dir / 'pgbouncer.out').read_text()[-2000:]}")
            try:
                with psycopg.connect(conninfo, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # pgbouncer: SIGINT is a fast, clean shutdown
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pgbouncer_url(pg_url: str) -> Iterator[str]:
    """``pg_url`` through a PgBouncer of this test's own, in transaction mode."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if binary is None:
        service_missing("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    assert binary is not None
    bouncer = PgBouncer(binary, pg_url)
    try:
        bouncer.start()
        yield bouncer.url
    finally:
        bouncer.stop()
