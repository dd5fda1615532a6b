"""The limits every PostgreSQL session of herald carries, for a host that vanishes mid-transaction."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from herald.queue.sql_engine import make_engine as make_queue_engine
from herald.tracker.db import make_engine as make_tracker_engine


@pytest.mark.parametrize("make", [make_tracker_engine, make_queue_engine], ids=["tracker", "queue"])
def test_each_session_bounds_a_vanished_peer(pg_url: str, make: Callable[[str], Engine]) -> None:
    # Shown in the units they were set in. tcp_user_timeout: keepalive probes are not sent while the
    # server's own answer to the vanished host is unacknowledged (retransmission); without it the session
    # and its row locks would outlive the cut by the kernel's ~15 min of retries.
    engine = make(pg_url)
    try:
        with engine.connect() as conn:
            settings = {
                name: conn.exec_driver_sql(f"SHOW {name}").scalar()
                for name in ("idle_in_transaction_session_timeout", "tcp_keepalives_idle", "tcp_user_timeout")
            }
    finally:
        engine.dispose()
    assert settings == {
        "idle_in_transaction_session_timeout": "5s",
        "tcp_keepalives_idle": "10",
        "tcp_user_timeout": "25000",
    }
