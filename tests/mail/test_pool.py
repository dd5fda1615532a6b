"""RelayPool against aiosmtpd: bounded, reused, thread-safe; broken and stale connections replaced."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from herald.config import load_settings
from herald.mail import (
    MailboxTransport,
    MailConnectionError,
    PermanentMailError,
    RateLimiter,
    RelayPool,
    make_pool,
)
from herald.mail.transport import serialize
from tests.mail.messages import SENDER, build_message
from tests.support.smtp import DROP, smtp_settings
from tests.support.waiting import wait_until


def raw(subject: str = "hello") -> bytes:
    return serialize(build_message(subject=subject))


def test_threads_share_at_most_max_connections(smtp_server):
    pool = RelayPool(smtp_settings(smtp_server), max_connections=3)

    def send(i: int) -> int:
        return pool.send_bytes(raw(f"m{i}"), SENDER, f"user{i}@example.org", message_id=f"<{i}@x>").code

    with pool, ThreadPoolExecutor(max_workers=8) as executor:
        codes = list(executor.map(send, range(40)))

    assert codes == [250] * 40
    received = smtp_server.wait_for(40)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(f"user{i}@example.org" for i in range(40))
    assert smtp_server.max_open_connections <= 3
    assert smtp_server.connections <= 3  # reused, never reopened
    smtp_server.wait_disconnected()  # close() said QUIT to all


def test_connection_is_reused_across_sends(smtp_server):
    with RelayPool(smtp_settings(smtp_server), max_connections=4) as pool:
        for i in range(5):
            receipt = pool.send_bytes(raw(), SENDER, "bob@example.org", message_id=f"<{i}@x>")
            assert receipt.message_id == f"<{i}@x>"

    assert len(smtp_server.wait_for(5)) == 5
    assert smtp_server.connections == 1


def test_bytes_go_out_unchanged_with_smtputf8_when_asked(smtp_server):
    message = build_message(subject="Grüße", to="josé@example.org")
    data = serialize(message, utf8=True)

    with RelayPool(smtp_settings(smtp_server), max_connections=1) as pool:
        pool.send_bytes(data, SENDER, "bob@example.org", utf8=True)

    [received] = smtp_server.wait_for(1)
    assert received.data == data
    assert "SMTPUTF8" in received.mail_options


def test_a_connection_broken_at_the_relay_is_replaced(smtp_server):
    smtp_server.script_data(DROP)
    with RelayPool(smtp_settings(smtp_server), max_connections=1) as pool:
        with pytest.raises(MailConnectionError):
            pool.send_bytes(raw("lost"), SENDER, "bob@example.org")
        pool.send_bytes(raw("next"), SENDER, "bob@example.org")

    [received] = smtp_server.wait_for(1)
    assert received.message()["Subject"] == "next"
    assert received.connection == 2


def test_a_connection_dropped_while_idle_is_reopened(smtp_server):
    with RelayPool(smtp_settings(smtp_server), max_connections=1) as pool:
        pool.send_bytes(raw("first"), SENDER, "bob@example.org")
        smtp_server.drop_connections()
        pool.send_bytes(raw("second"), SENDER, "bob@example.org")

    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 2]


def test_a_refused_recipient_keeps_the_connection(smtp_server):
    smtp_server.refuse_recipient("nobody@example.org")
    with RelayPool(smtp_settings(smtp_server), max_connections=1) as pool:
        with pytest.raises(PermanentMailError):
            pool.send_bytes(raw(), SENDER, "nobody@example.org")
        pool.send_bytes(raw(), SENDER, "bob@example.org")

    assert len(smtp_server.wait_for(1)) == 1
    assert smtp_server.connections == 1


def test_idle_connections_past_max_idle_are_closed_not_reused(smtp_server):
    with RelayPool(smtp_settings(smtp_server), max_connections=2, max_idle=0.0) as pool:
        pool.send_bytes(raw(), SENDER, "bob@example.org")
        pool.send_bytes(raw(), SENDER, "bob@example.org")

    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 2]
    smtp_server.wait_disconnected()


def test_a_bad_envelope_costs_no_connection(smtp_server):
    with RelayPool(smtp_settings(smtp_server), max_connections=1) as pool:
        with pytest.raises(PermanentMailError, match="recipient"):
            pool.send_bytes(raw(), SENDER, "bob@example.org\r\nRCPT TO:<eve@example.org>")
        assert pool.stats() == {"busy": 0, "idle": 0, "max": 1}

    assert smtp_server.connections == 0


def test_send_blocks_while_every_connection_is_busy(smtp_server):
    # One connection, two senders: the second waits on the first. The first is held in the limiter
    # (after borrowing), so the test controls when it proceeds.
    release = threading.Event()
    entered = threading.Event()

    class Gate(RateLimiter):
        def __init__(self) -> None:
            self.calls = 0

        def acquire(self) -> None:
            self.calls += 1
            if self.calls == 1:
                entered.set()
                release.wait(10)

    gate = Gate()
    with RelayPool(smtp_settings(smtp_server), max_connections=1, limiter=gate) as pool:
        first = threading.Thread(target=pool.send_bytes, args=(raw("1"), SENDER, "a@example.org"))
        first.start()
        assert entered.wait(10)
        second = threading.Thread(target=pool.send_bytes, args=(raw("2"), SENDER, "b@example.org"))
        second.start()
        # The semaphore's wait queue is private, but it is the one place that says "blocked".
        wait_until(lambda: len(pool._slots._cond._waiters) == 1, "the second send to wait")
        assert pool.stats()["busy"] == 1
        release.set()
        first.join(10)
        second.join(10)

    assert [r.rcpt_tos[0] for r in smtp_server.wait_for(2)] == ["a@example.org", "b@example.org"]
    assert smtp_server.connections == 1


def test_without_smtp_host_the_pool_stores_in_the_mailbox(tmp_path):
    settings = load_settings(env={"HERALD_DATA_DIR": str(tmp_path)})
    data = raw("kept as given")

    with make_pool(settings, max_connections=4) as pool, ThreadPoolExecutor(4) as executor:
        receipts = list(
            executor.map(
                lambda i: pool.send_bytes(data, SENDER, f"u{i}@example.org", message_id="<k@x>"), range(8)
            )
        )
        pool.probe()

    assert {r.code for r in receipts} == {250}
    box = MailboxTransport(settings)
    assert box.count() == 8
    key = receipts[0].reply.removeprefix("stored as ")
    stored = (settings.mailbox_dir / "new" / key).read_bytes()
    envelope = f"Return-Path: <{SENDER}>\nDelivered-To: {receipts[0].recipient}\n".encode()
    assert stored == envelope + data.replace(b"\r\n", b"\n")


def test_make_pool_takes_the_rate_limit_from_the_settings(tmp_path, smtp_server):
    settings = smtp_settings(smtp_server, data_dir=tmp_path, smtp_rate_limit="2/s")

    pool = make_pool(settings, max_connections=5)

    assert pool.max_connections == 5
    assert "2/s" in repr(pool)
    assert make_pool(smtp_settings(smtp_server), max_connections=1)._limiter is None
