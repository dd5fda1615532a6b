"""Backend notifications end to end, crash tests included: nothing lost, nobody mailed twice except the one
message in flight when a process was killed."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from email import policy
from email.parser import BytesParser

import pytest
from sqlalchemy import select

from herald.outbox import Delivery, DeliveryStatus, Notification, NotificationState, ledger
from herald.outbox.ledger import Outcome
from herald.queue import make_queue
from herald.queue.keys import JOB_FIELD, RedisKeys
from herald.tracker.models import WorkerHeartbeat, utcnow
from tests.e2e.conftest import DEADLINE, RECIPIENTS, Stack, wait_until
from tests.support.smtp import HANG

pytestmark = pytest.mark.slow

#: smtp_timeout for the tests that kill a worker whose send hangs: the kill, not a timeout, ends the hang.
HANG_OUTLASTS_THE_TEST = "300"


def report(line: str) -> None:
    """Crash-test counts, shown with ``pytest -s`` (and in the closing note of the issue)."""
    print(f"\n[e2e] {line}")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_many_changesets_through_the_api_are_each_delivered_exactly_once(make_stack, request, database):
    url = request.getfixturevalue("pg_url") if database == "postgresql" else None
    stack: Stack = make_stack(url)
    stack.start_workers()
    stack.wait_workers(2)
    stack.burst(creations=10, updates=30)
    tally = stack.wait_all_delivered()
    report(tally.line(f"40 changesets x 3 recipients, 2 workers, {database}"))
    assert (tally.unique, tally.duplicated) == (120, 0)
    for message in stack.smtp.messages:
        assert len(message.rcpt_tos) == 1 and message.rcpt_tos[0] in RECIPIENTS
    with stack.db.read() as s:
        n = s.get(Notification, stack.changesets[-1])
        assert n.mode.value == "async" and n.job_id and n.queued_at and n.started_at and n.finished_at
        assert {d.status for d in n.deliveries} == {DeliveryStatus.SENT}
    log = stack.log()
    assert "supervisor started" in log and "job received" in log and "job processed" in log
    assert "Notification: Start notification" in log and "mode=async" in log


def test_sigkill_of_a_worker_mid_send_loses_nothing(make_stack):
    # The 10th message hangs in DATA: its worker is provably mid-job when it is killed.
    stack: Stack = make_stack(HERALD_SMTP_TIMEOUT=HANG_OUTLASTS_THE_TEST)
    _, pid = _hang_mid_run(stack, ok=9, creations=10, updates=30)
    in_flight = stack.kill(pid)  # its mails accepted by the server and not recorded when it was stopped
    tally = stack.wait_all_delivered()
    report(tally.line(f"SIGKILL of worker pid {pid} mid-send ({in_flight} in flight)"))
    assert tally.lost == 0
    assert tally.duplicated <= in_flight, stack.duplicates()
    assert "exited with signal SIGKILL" in stack.log()


def test_sigkill_of_a_worker_at_a_random_moment_loses_nothing(stack: Stack):
    stack.start_workers()
    pids = stack.wait_workers(2)
    stack.burst(creations=10, updates=30)
    kill_after = stack.rng.randint(10, 90)
    wait_until(lambda: len(stack.smtp.messages) >= kill_after, f"{kill_after} messages")
    victim = stack.rng.choice(sorted(pids.values()))
    in_flight = stack.kill(victim)
    tally = stack.wait_all_delivered()
    report(tally.line(f"SIGKILL of worker pid {victim} after {kill_after} messages, {in_flight} in flight"))
    assert tally.lost == 0 and tally.duplicated <= in_flight, stack.duplicates()


# A stand-in for a worker: sends one mail, begins another (MAIL and RCPT accepted, no DATA), says so, waits.
_SENDER = """
import smtplib, sys, time
host, port, sent, begun = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
client = smtplib.SMTP(host, port, timeout=30)
client.sendmail("noreply@example.org", ["bob@example.org"], sent)
client.mail("noreply@example.org")
client.rcpt("carol@example.org")
print("ready", flush=True)
time.sleep(600)
"""


def _mail(changeset_id: int, address: str) -> str:
    mid = f"<herald.cs{changeset_id}.{address.split('@')[0]}@example.org>"
    return f"Message-ID: {mid}\r\nX-Herald-Changeset-ID: {changeset_id}\r\nSubject: s\r\n\r\nbody\r\n"


def test_the_mails_in_flight_are_counted_at_the_stop_over_the_stopped_process_s_own_connections(stack: Stack):
    """What the crash tests above allow to come twice, made deterministic. A process sent bob's mail and did
    not record it, and began carol's; it is stopped; while it is stopped a successor sends bob's mail again
    and records it (leases are seconds long: under load a successor does take over during the stop), and
    a live process sends dave's without recording it yet. In flight: bob's and carol's while it is stopped,
    bob's alone once it is killed (carol's never ends) — not dave's, and bob's even though recorded now."""
    cs = stack.create()["changeset_id"]  # no workers: only the processes here send its mail
    bob, carol, dave = RECIPIENTS
    sender = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SENDER,
            stack.smtp.host,
            str(stack.smtp.port),
            _mail(cs, bob),
            _mail(cs, carol),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert sender.stdout is not None
        assert sender.stdout.readline() == b"ready\n"
        frozen = stack.freeze(sender.pid)
        assert len(frozen.connections) == 1 and (cs, bob) not in frozen.recorded
        with smtplib.SMTP(stack.smtp.host, stack.smtp.port, timeout=30) as successor:
            successor.sendmail("noreply@example.org", [bob], _mail(cs, bob))
            successor.sendmail("noreply@example.org", [dave], _mail(cs, dave))
        now = utcnow()
        with stack.db.write() as conn:
            ledger.sync(conn, cs, [(bob, None, "assignee")], now)
            ledger.record(conn, cs, [Outcome(bob, DeliveryStatus.SENT, "250 OK")], now)
        assert (cs, bob) in stack.recorded()
        assert stack.in_flight(frozen) == 2
        assert stack.kill_frozen(frozen) == 1
        assert sender.wait(timeout=DEADLINE) == -signal.SIGKILL
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        if sender.stdout is not None:
            sender.stdout.close()
    assert stack.duplicates() == {f"<herald.cs{cs}.bob@example.org>": 2}


def test_a_killed_workers_jobs_go_to_the_live_one_at_once_not_after_the_lease(make_stack):
    """With a 60 s lease, only the supervisor's hand-back can deliver the dead worker's jobs this soon."""
    stack: Stack = make_stack(HERALD_LEASE_SECONDS="60", HERALD_SMTP_TIMEOUT=HANG_OUTLASTS_THE_TEST)
    _, pid = _hang_mid_run(stack, ok=9, creations=10, updates=30)  # its worker is mid-job
    in_flight = stack.kill(pid)
    killed = time.monotonic()
    tally = stack.wait_all_delivered(timeout=30)  # well under the 60 s lease
    recovered = time.monotonic() - killed
    report(
        tally.line(f"SIGKILL, 60 s lease: last mail {recovered:.1f}s after the kill ({in_flight} in flight)")
    )
    assert tally.lost == 0 and tally.duplicated <= in_flight
    assert "handed back" in stack.log()


def test_a_worker_frozen_past_its_lease_is_fenced_off_when_it_wakes(make_stack, pg_url):
    """SIGSTOP a worker mid-send past its lease; another takes its changeset over; SIGCONT: its late writes
    are refused by the fencing token and nobody is mailed twice.

    On PostgreSQL: a SQLite writer frozen inside a transaction holds the one write lock of the database
    and stalls every other writer until it wakes (SQLite's own lock does the same), so whether the others
    can take over during the freeze would depend on where the freeze landed."""
    # The hung send must outlast the time until the freeze (seconds under load), and end once the worker
    # is woken, so that it gets to its late writes.
    stack: Stack = make_stack(pg_url, HERALD_SMTP_TIMEOUT="20")
    holder, pid = _hang_mid_run(stack, ok=4, creations=4, updates=4)
    hung = _changeset_held_by(stack, holder)
    frozen = stack.freeze(pid)
    try:
        wait_until(lambda: _fence(stack, hung) >= 2, "another worker to take the hung changeset over")
        in_flight = stack.in_flight(frozen)  # what it sent unrecorded, and what it will finish on waking
    finally:
        os.kill(pid, signal.SIGCONT)
    stack.wait_all_delivered()
    wait_until(lambda: "late writes were refused" in stack.log(), "the woken worker to be fenced off")
    time.sleep(1.0)  # let the woken worker finish whatever it was doing: it must change nothing
    tally = stack.tally()
    report(tally.line(f"SIGSTOP past the lease, then SIGCONT ({in_flight} in flight)"))
    assert tally.lost == 0 and tally.duplicated <= in_flight
    assert stack.all_done()
    with stack.db.read() as s:
        assert {d.status for d in s.scalars(select(Delivery))} == {DeliveryStatus.SENT}


def test_a_redis_restart_mid_run_loses_nothing(stack: Stack):
    stack.start_workers()
    stack.wait_workers(2)
    stack.burst(creations=10, updates=10)
    wait_until(lambda: len(stack.smtp.messages) >= 15, "delivery to be under way")
    stack.redis.restart()  # SIGTERM: Redis writes its append-only file, then starts from it
    stack.burst(creations=0, updates=20)
    tally = stack.wait_all_delivered()
    report(tally.line("redis-server restarted mid-run"))
    assert (tally.lost, tally.duplicated) == (0, 0)


def test_redis_losing_all_its_data_mid_run_loses_nothing(stack: Stack):
    stack.start_workers()
    stack.wait_workers(2)
    stack.smtp.script_data(*["250 OK"] * 30, *["451 4.3.0 slow down"] * 10)  # some retries in flight too
    stack.burst(creations=10, updates=30)
    wait_until(lambda: len(stack.smtp.messages) >= 30, "delivery to be under way")
    client = stack.redis.client()
    keys = list(client.scan_iter(match=f"{{{stack.settings.redis_namespace}*"))
    client.delete(*keys)  # as a restart without persistence would: queued, in-flight and delayed jobs gone
    client.close()
    tally = stack.wait_all_delivered(timeout=45)
    report(tally.line("Redis lost every key mid-run (no persistence)"))
    assert tally.lost == 0 and tally.duplicated == 0


def test_redis_losing_every_queued_job_before_any_worker_ran_loses_nothing(stack: Stack):
    stack.burst(creations=10, updates=10)  # queued, no worker yet
    wait_until(lambda: stack.states() == {NotificationState.QUEUED.value: 20}, "the pushes to be recorded")
    client = stack.redis.client()
    keys = list(client.scan_iter(match=f"{{{stack.settings.redis_namespace}*"))
    client.delete(*keys)
    client.close()
    stack.start_workers()
    tally = stack.wait_all_delivered(timeout=45)
    report(tally.line("Redis lost every queued job before any worker ran"))
    assert tally.lost == 0 and tally.duplicated == 0
    assert "relay pushed" in stack.log()


def test_with_redis_down_at_enqueue_time_the_request_is_fast_and_mail_follows(stack: Stack):
    stack.start_workers()
    stack.wait_workers(2)
    stack.create()
    stack.wait_all_delivered()
    stack.redis.stop()
    try:
        started = time.perf_counter()
        body = stack.update()
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5, elapsed
        assert body["notification"]["mode"] == "async"
        with stack.db.read() as s:
            assert s.get(Notification, body["changeset_id"]).state is NotificationState.PENDING
        assert len(stack.smtp.messages) == 3  # nothing sent inline instead
    finally:
        stack.redis.start()
    tally = stack.wait_all_delivered()
    report(tally.line(f"redis-server down at enqueue time (request took {elapsed * 1000:.1f} ms)"))
    assert (tally.unique, tally.duplicated) == (6, 0)


def test_garbage_on_the_queue_is_dead_lettered_and_the_workers_live_on(stack: Stack):
    stack.start_workers()
    pids = stack.wait_workers(2)
    client = stack.redis.client()
    stream = RedisKeys(stack.settings.redis_namespace, stack.settings.queue_shards).shard(0).stream
    client.xadd(stream, {JOB_FIELD: b'{"v": 1, "id": "nope"}'})
    client.xadd(stream, {b"other": b"no job field"})
    client.close()
    stack.burst(creations=3, updates=3)
    stack.wait_all_delivered()
    with make_queue(stack.settings) as queue:
        letters = queue.dead_letters()
    assert len(letters) == 2 and all("malformed job" in d.reason for d in letters)
    assert stack.worker_pids() == pids  # same processes: nobody crashed
    assert "exited" not in stack.log()


def test_sigterm_exits_cleanly_and_loses_nothing(stack: Stack):
    supervisor = stack.start_workers()
    stack.wait_workers(2)
    stack.burst(creations=10, updates=30)
    wait_until(lambda: len(stack.smtp.messages) >= 20, "delivery to be under way")
    assert stack.stop_workers(supervisor) == 0
    log = stack.log()
    assert "worker-1 (pid" in log and "worker-2 (pid" in log
    assert log.count("exited with code 0") == 2, log
    assert "supervisor stopped" in log
    assert stack.worker_pids() == {}  # clean exits remove their heartbeats
    stack.start_workers()
    tally = stack.wait_all_delivered()
    report(tally.line("SIGTERM of the supervisor mid-run, then a restart"))
    assert (tally.lost, tally.duplicated) == (0, 0)


def test_the_supervisor_restarts_a_killed_worker(stack: Stack):
    stack.start_workers()
    before = stack.wait_workers(2)
    name, pid = sorted(before.items())[0]
    os.kill(pid, signal.SIGKILL)
    after = wait_until(
        lambda: (p := stack.worker_pids()).get(name) not in (None, pid) and p, "the worker to come back"
    )
    assert len(after) == 2
    stack.burst(creations=2, updates=2)
    assert stack.wait_all_delivered().duplicated == 0
    assert f"(pid {pid}) exited with signal SIGKILL" in stack.log()


def test_with_async_off_one_recovery_worker_finishes_inline_retries(make_stack):
    stack: Stack = make_stack(HERALD_ASYNC_EMAILS="false")
    stack.smtp.script_data("451 4.3.0 later")
    stack.start_workers()
    stack.wait_workers(1)  # not nb_backend_workers = 2: inline projects need one, for recovery
    body = stack.create()
    assert body["notification"]["mode"] == "inline"
    assert len(stack.smtp.messages) == 2  # the request delivered the other two itself
    tally = stack.wait_all_delivered()
    assert (tally.unique, tally.duplicated) == (3, 0)
    assert "one recovery worker" in stack.log()


def test_with_zero_workers_nothing_is_delivered_and_the_supervisor_says_so(make_stack):
    stack: Stack = make_stack(HERALD_NB_BACKEND_WORKERS="0")
    stack.start_workers()
    wait_until(lambda: "nb_backend_workers = 0" in stack.log(), "the warning")
    body = stack.create()

    def state() -> NotificationState:
        with stack.db.read() as s:
            return s.get(Notification, body["changeset_id"]).state

    wait_until(lambda: state() is NotificationState.QUEUED, "the push to be recorded")
    assert stack.worker_pids() == {}
    with stack.db.read() as s:
        (supervisor,) = s.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.kind == "supervisor")).all()
        assert supervisor.info["workers_wanted"] == 0 and supervisor.info["relay"] is False
    assert stack.smtp.messages == []


def _hang_mid_run(stack: Stack, *, ok: int, creations: int, updates: int) -> tuple[str, int]:
    """Workers up, a burst of changes whose message number ``ok + 1`` hangs in DATA: return the holder
    of the changeset whose message hangs, and its worker's pid. The hang lasts ``smtp_timeout``: the
    stack's 5 s are over before a loaded machine gets to the kill, so the tests that need the worker
    mid-send when it is killed set it longer than they run (:data:`HANG_OUTLASTS_THE_TEST`)."""
    stack.smtp.script_data(*["250 OK"] * ok, HANG)
    stack.start_workers()
    stack.wait_workers(2)
    stack.burst(creations=creations, updates=updates)
    wait_until(lambda: stack.smtp.data_count >= ok + 1, f"message {ok + 1} to hang")
    (hung,) = stack.smtp.refused_data  # the hanging message is the only one not answered 250
    changeset_id = int(BytesParser(policy=policy.default).parsebytes(hung)["X-Herald-Changeset-ID"])
    holder = wait_until(lambda: _running_holder(stack, changeset_id), "the hung job's holder")
    return holder, int(holder.split(":")[-2])


def _changeset_held_by(stack: Stack, holder: str) -> int:
    with stack.db.read() as s:
        return s.scalar(select(Notification.changeset_id).where(Notification.worker == holder))


def _fence(stack: Stack, changeset_id: int) -> int:
    with stack.db.read() as s:
        return s.scalar(select(Notification.fence).where(Notification.changeset_id == changeset_id))


def _running_holder(stack: Stack, changeset_id: int) -> str | None:
    with stack.db.read() as s:
        holder = s.scalar(
            select(Notification.worker).where(
                Notification.changeset_id == changeset_id, Notification.state == NotificationState.RUNNING
            )
        )
    return holder if holder and ":worker-" in holder else None


def test_a_supervisor_whose_parent_dies_stops_its_workers_and_itself(stack: Stack):
    # As under `herald up`: the supervisor's parent is killed without a chance to pass SIGTERM on.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    parent = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -m herald workers --supervised & wait'],
        env={**clean, **stack.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        stack.wait_workers(2)
    finally:
        parent.kill()
        parent.wait()
    wait_until(
        lambda: "the process that started the supervisor is gone" in stack.log(), "the supervisor to notice"
    )
    wait_until(lambda: "supervisor stopped" in stack.log(), "the supervisor to stop")
    assert stack.worker_pids() == {}  # its workers stopped cleanly (heartbeats removed)
    assert stack.log().count("exited with code 0") == 2


def test_a_relay_outage_longer_than_delivery_max_age_fails_nobody_and_drains_after(make_stack):
    """herald 0.1 failed recipients for good about two minutes into an outage; here the outage outlasts
    delivery_max_age itself and nobody fails, because a relay that is down charges no recipient."""
    stack: Stack = make_stack(HERALD_DELIVERY_MAX_AGE="1")
    stack.start_workers()
    stack.wait_workers(2)
    stack.burst(creations=2, updates=2)
    stack.wait_all_delivered()
    stack.smtp.go_down()
    stack.burst(creations=3, updates=5)  # 24 mails owed while the relay is down
    wait_until(lambda: "relay unusable" in stack.log(), "a worker to notice the outage")
    time.sleep(3)  # three times delivery_max_age
    with stack.db.read() as s:
        assert all(
            d.attempts == 0 for d in s.scalars(select(Delivery)) if d.status is not DeliveryStatus.SENT
        )
    stack.smtp.come_back()
    back = time.monotonic()
    tally = stack.wait_all_delivered()
    report(
        tally.line(
            f"relay down 3 s past delivery_max_age: all delivered {time.monotonic() - back:.1f}s after"
        )
    )
    assert (tally.lost, tally.duplicated) == (0, 0)
    with stack.db.read() as s:
        assert {d.status for d in s.scalars(select(Delivery))} == {DeliveryStatus.SENT}
    assert "relay usable again" in stack.log()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_sql_queue_delivers_every_change_once_and_survives_a_sigkill(make_stack, request, database):
    url = request.getfixturevalue("pg_url") if database == "postgresql" else None
    stack: Stack = make_stack(url, HERALD_QUEUE_BACKEND="sql")
    stack.start_workers()
    pids = stack.wait_workers(2)
    stack.burst(creations=10, updates=30)
    wait_until(lambda: len(stack.smtp.messages) >= 30, "delivery to be under way")
    in_flight = stack.kill(sorted(pids.values())[0])
    tally = stack.wait_all_delivered(timeout=60)
    report(tally.line(f"SQL queue on {database}, SIGKILL of one worker ({in_flight} in flight)"))
    assert tally.lost == 0 and tally.duplicated <= in_flight
