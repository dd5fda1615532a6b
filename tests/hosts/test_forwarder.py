"""The namespaces' forwarder is faithful to a network cut: once the host vanished, the server side of its
PostgreSQL session closes, as the server's own ``tcp_user_timeout`` would close it, even when the session's
idle-in-transaction timer is disarmed and the server's answer is still in flight towards the host."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tests.support.netns import Namespaces
from tests.support.waiting import wait_until

#: In a transaction, a pipeline (psycopg's executemany) answered after the cut. Its trailing Flush message
#: disarms the server's idle-in-transaction timer; the answer leaves unacknowledged data towards the
#: vanished host, so TCP keepalive probes are not sent either.
CLIENT = """
import sys, psycopg
conn = psycopg.connect(sys.argv[1])
conn.execute("SET idle_in_transaction_session_timeout = 5000")
conn.commit()
print(conn.info.backend_pid, flush=True)
cur = conn.cursor()
cur.execute("SELECT 1")
cur.executemany("SELECT pg_sleep(%s)", [(0.0,), (1.0,)])
"""


def test_a_cut_host_s_session_ends_on_the_server(namespaces: Namespaces, pg_url: str, tmp_path: Path) -> None:
    port = int(re.search(r":(\d+)/", pg_url).group(1))  # type: ignore[union-attr]
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    ns = namespaces.make()
    ns.forward(port)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    client = subprocess.Popen(
        ns.command([sys.executable, str(script), dsn.replace("@127.0.0.1:", f"@{ns.host_addr}:")]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        pid = int(client.stdout.readline())
        time.sleep(0.5)  # the cut must fall while the server is still working on the pipeline
        ns.cut()
        cut_at = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as monitor:

            def ended() -> bool:
                row = monitor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                return row is None

            wait_until(ended, "the cut host's session ended by the server", timeout=15)
        print(f"session ended {time.monotonic() - cut_at:.1f}s after the cut")
    finally:
        client.kill()
        client.wait()
