"""Issue 8's "done means": each failure class caused for real, and ``herald check`` reporting it with the
right exit code and advice within ``stale_after_seconds`` of its start.

Real processes (``herald workers`` and its workers, ``herald worker``, ``herald up``), the session's
redis-server, aiosmtpd, SQLite. ``herald check`` is polled in-process (the library call behind the
command) until the expected finding shows, then run once as the real command, whose exit code and first
lines are asserted. Run with ``-s`` to see, for each class, what check printed and how long it took:

    .venv/bin/pytest tests/e2e/test_check_e2e.py -s -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import httpx2 as httpx
import pytest
from sqlalchemy import select

from herald.config import DispatchMode
from herald.ops.check import run_check
from herald.ops.findings import CheckReport
from herald.outbox import records
from herald.queue import make_queue
from herald.queue.keys import JOB_FIELD, RedisKeys
from herald.tracker.artifacts import create_artifact
from herald.tracker.models import User, WorkerHeartbeat, utcnow
from tests.e2e.conftest import RECIPIENTS, Stack, wait_until
from tests.support.services import free_port
from tests.support.smtp import HANG

STALE = 10  # stale_after_seconds of these installations: every failure must show within it


@pytest.fixture
def checked(make_stack: Callable[..., Stack]) -> Callable[..., Stack]:
    def make(**env: str) -> Stack:
        return make_stack(HERALD_STALE_AFTER_SECONDS=str(STALE), **env)

    return make


def detect(
    stack: Stack, code: str | set[str], since: float, status: str | None = None, *, bound: float = STALE
) -> tuple[float, CheckReport]:
    """Poll the check until it reports ``code`` (or one of the codes, with ``status``); the seconds since
    ``since`` and the report. Fails past ``bound`` (``stale_after_seconds``)."""
    codes = {code} if isinstance(code, str) else code
    with make_queue(stack.settings) as queue:

        def found() -> CheckReport | None:
            report = run_check(stack.settings, stack.db, queue, redis_probe=False)
            hit = [
                f for f in report.findings if f.code in codes and (status is None or f.status.name == status)
            ]
            return report if hit else None

        report = wait_until(found, f"herald check to report {sorted(codes)}", timeout=bound + 5)
    elapsed = time.monotonic() - since
    assert elapsed <= bound, f"{sorted(codes)} took {elapsed:.1f}s to show, more than {bound}s"
    return elapsed, report


def run_command(stack: Stack) -> tuple[int, list[str], dict]:
    """``herald check`` and ``herald check --json`` as real processes: exit code, text lines, document."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(stack.env)
    env["HERALD_STALE_AFTER_SECONDS"] = str(STALE)
    text = subprocess.run(
        [sys.executable, "-m", "herald", "check"], env=env, capture_output=True, text=True, timeout=60
    )
    as_json = subprocess.run(
        [sys.executable, "-m", "herald", "check", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return text.returncode, text.stdout.splitlines(), json.loads(as_json.stdout)


def record(name: str, elapsed: float, code: int, lines: list[str], finding: str = "") -> None:
    """One row of the closing note's table (shown with ``-s``): the verdict without its perfdata, and the
    line of the finding that names the failure."""
    line = next((x for x in lines[1:] if finding and x.split(":")[0].endswith(f" {finding}")), "")
    print(f"\n| {name} | {elapsed:.1f} s | exit {code} | {lines[0].split(' | ')[0]} | {line} |")


def assert_reported(stack: Stack, code: str, exit_code: int) -> tuple[int, list[str]]:
    rc, lines, doc = run_command(stack)
    assert rc == exit_code, lines
    assert code in {f["code"] for f in doc["findings"]}, doc
    finding = next(f for f in doc["findings"] if f["code"] == code)
    assert finding["next_step"] and finding["doc"] == f"docs/operations.md#check-{code}"
    assert any(line.startswith(f"{finding['status']} {code}: ") for line in lines), lines
    assert lines[0].startswith(f"HERALD {doc['status']} - ")
    return rc, lines


def test_all_well_is_ok(checked):
    stack = checked()
    stack.start_workers()
    stack.wait_workers(2)
    stack.burst(creations=2, updates=2)
    stack.wait_all_delivered()
    rc, lines, _doc = run_command(stack)
    assert rc == 0, lines
    assert lines[0].startswith("HERALD OK - notifications are flowing | workers_alive=2 workers_expected=2")
    record("all well", 0.0, rc, lines)


def test_workers_stopped_with_jobs_waiting(checked):
    stack = checked()
    supervisor = stack.start_workers()
    stack.wait_workers(2)
    assert stack.stop_workers(supervisor) == 0
    since = time.monotonic()
    stack.burst(creations=2, updates=0)
    elapsed, _ = detect(stack, "no-worker", since, "CRITICAL")
    rc, lines = assert_reported(stack, "no-worker", 2)
    assert "no backend worker is alive (0 of 2); 2 notification(s) undelivered" in lines[0]
    record("workers stopped, jobs waiting", elapsed, rc, lines, "no-worker")


def test_a_worker_sigstopped_mid_job(checked):
    stack = checked(HERALD_SMTP_TIMEOUT="60")
    stack.start_workers()
    stack.wait_workers(2)
    stack.smtp.script_data(HANG)  # the first message never gets its reply: its worker is mid-job
    stack.create()
    wait_until(lambda: stack.smtp.data_count >= 1, "a worker to be inside DATA")
    pid = wait_until(lambda: busy_in_heartbeat(stack), "the heartbeat to show the job in hand")
    os.kill(pid, signal.SIGSTOP)
    since = time.monotonic()
    try:
        elapsed, _ = detect(stack, "worker-stuck", since, "WARNING")
        rc, lines = assert_reported(stack, "worker-stuck", 1)
        assert any(f"(pid {pid}) stopped beating" in line for line in lines), lines
        assert any(f"kill -CONT {pid}" in line for line in lines), lines
        record("a worker SIGSTOPped mid-job", elapsed, rc, lines, "worker-stuck")
        stack.wait_all_delivered()  # the other worker took the job over once the lease ran out
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)


def busy_in_heartbeat(stack: Stack) -> int | None:
    """The pid of a worker whose heartbeat shows a job in hand."""
    with stack.db.read() as s:
        rows = s.execute(
            select(WorkerHeartbeat.pid, WorkerHeartbeat.info).where(WorkerHeartbeat.kind == "worker")
        )
        return next((pid for pid, info in rows if info.get("jobs")), None)


def test_redis_down(checked):
    stack = checked()
    stack.start_workers()
    stack.wait_workers(2)
    stack.redis.stop()
    since = time.monotonic()
    try:
        elapsed, _ = detect(stack, "queue-unreachable", since, "CRITICAL")
        rc, lines = assert_reported(stack, "queue-unreachable", 2)
        record("Redis down", elapsed, rc, lines, "queue-unreachable")
    finally:
        stack.redis.start()


def test_smtp_relay_down(checked):
    stack = checked(HERALD_NB_BACKEND_WORKERS="1")
    stack.start_workers()
    stack.wait_workers(1)
    stack.smtp.go_down()
    since = time.monotonic()
    try:
        stack.create()
        elapsed, _ = detect(stack, "smtp-relay-down", since, "CRITICAL")
        rc, lines = assert_reported(stack, "smtp-relay-down", 2)
        assert "unusable for 1 of 1 worker(s)" in lines[0]
        record("SMTP relay down", elapsed, rc, lines, "smtp-relay-down")
    finally:
        stack.smtp.come_back()
    stack.wait_all_delivered()


def test_smtp_relay_answering_451_to_everything(checked):
    stack = checked()
    stack.start_workers()
    stack.wait_workers(2)
    for address in RECIPIENTS:
        stack.smtp.refuse_recipient(address, "451 4.3.0 <{address}>: try again later")
    since = time.monotonic()
    stack.create()
    stack.update()
    elapsed, _ = detect(stack, "smtp-4xx", since, "CRITICAL")
    rc, lines = assert_reported(stack, "smtp-4xx", 2)
    assert "451 4.3.0" in lines[0]
    record("relay answering 451 to everything", elapsed, rc, lines, "smtp-4xx")


def test_dead_letters(checked):
    stack = checked()
    stack.start_workers()
    stack.wait_workers(2)
    client = stack.redis.client()
    since = time.monotonic()
    keys = RedisKeys(stack.settings.redis_namespace, stack.settings.queue_shards).shard(0)
    client.xadd(keys.stream, {JOB_FIELD: b'{"v": 1, "id": "nope"}'})
    client.zadd(keys.live, {"garbage-enqueue-time": 0})  # 1970: the oldest age must not read 57 years
    client.close()
    elapsed, _ = detect(stack, "dead-letters", since, "WARNING")
    rc, lines = assert_reported(stack, "dead-letters", 1)
    assert "1 dead letter(s)" in lines[0]
    assert "queue_oldest_age_s=0.0" in lines[0]
    record("dead letters", elapsed, rc, lines, "dead-letters")


@pytest.fixture
def lone_workers(tmp_path: Path) -> Iterator[Callable[[Stack, int], list[subprocess.Popen[bytes]]]]:
    """``herald worker --id N`` without a supervisor, as systemd runs them (here without herald-relay)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(stack: Stack, count: int) -> list[subprocess.Popen[bytes]]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        for i in range(1, count + 1):
            out = (tmp_path / f"worker-{i}.out").open("wb")
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "herald", "worker", "--id", str(i)],
                    env={**clean, **stack.env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
            out.close()
        return started

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_an_outbox_row_never_pushed(checked, lone_workers):
    """The front end committed a change and died before its push, and no relay runs to make up for it."""
    stack = checked()
    lone_workers(stack, 2)
    stack.wait_workers(2)
    with stack.db.session() as s:
        cs = create_artifact(
            s,
            tracker_id=stack.world.bugs.id,
            author=s.get(User, stack.world.users["alice"].id),
            values={"title": "committed, never pushed"},
        )
        records.record(s, cs.id, DispatchMode.ASYNC, utcnow())
    since = time.monotonic()
    elapsed, _ = detect(stack, "never-pushed", since)
    rc, lines = assert_reported(stack, "never-pushed", 2)
    assert any(line.startswith("CRITICAL outbox-relay-down: ") for line in lines), lines
    record("an outbox row never pushed (no relay)", elapsed, rc, lines, "never-pushed")


def test_the_supervisor_killed_inside_herald_up(checked, tmp_path: Path):
    stack = checked()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(stack.env)
    env["HERALD_STALE_AFTER_SECONDS"] = str(STALE)
    out = (tmp_path / "up.out").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "herald", "up", "--port", str(port)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    base = f"http://127.0.0.1:{port}"

    def healthz() -> int:
        with suppress(httpx.TransportError):
            return httpx.get(f"{base}/healthz", timeout=2).status_code
        return 0

    try:
        wait_until(lambda: healthz() == 200, "herald up to be healthy")
        with stack.db.read() as s:
            first = s.scalar(select(WorkerHeartbeat.pid).where(WorkerHeartbeat.kind == "supervisor"))
        os.kill(first, signal.SIGKILL)
        since = time.monotonic()
        # First the gap (its workers exit with it: no-worker), then the new supervisor's heartbeat says
        # it was restarted; the second needs a new Python process to start, slow on a loaded machine.
        elapsed, _ = detect(stack, {"no-worker", "outbox-relay-down", "supervisor-restarted"}, since)
        detect(stack, "supervisor-restarted", since, "WARNING", bound=3 * STALE)
        log = (stack.settings.log_dir / "herald.log").read_text()
        assert f"supervisor (pid {first}) exited with signal SIGKILL" in log
        assert "(restart 1)" in log
        wait_until(lambda: healthz() == 200, "/healthz ok again once the new supervisor's workers run")
        rc, lines = assert_reported(stack, "supervisor-restarted", 1)
        record("the supervisor killed inside herald up", elapsed, rc, lines, "supervisor-restarted")
        stack.create()  # and mail flows again
        stack.wait_all_delivered()
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
