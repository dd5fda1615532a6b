"""The queue contract: every test runs against Redis, SQLite and PostgreSQL (see conftest.backend)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from herald.queue import Job, LeaseLost, Queue, QueueStats, decode_job
from herald.queue.base import MAX_PAYLOAD_BYTES
from tests.queue.conftest import Backend, wait_until

LEASE = 0.5  # the smallest lease the configuration accepts


def counts(stats: QueueStats) -> tuple[int, int, int, int]:
    return stats.depth, stats.in_flight, stats.delayed, stats.dead


def test_enqueue_claim_ack(backend: Backend) -> None:
    queue = backend.make()
    job = Job.new(42)
    queue.enqueue(job)
    assert counts(queue.stats()) == (1, 0, 0, 0)

    claimed = queue.claim("w1", timeout=1)
    assert claimed is not None
    assert (claimed.id, claimed.changeset_id, claimed.enqueued_at) == (job.id, 42, job.enqueued_at)
    assert claimed.attempts == 1
    assert claimed.receipt
    assert counts(queue.stats()) == (0, 1, 0, 0)

    queue.ack(claimed)
    assert queue.stats() == QueueStats(depth=0, in_flight=0, delayed=0, dead=0, oldest_age_seconds=0.0)
    assert queue.claim("w1", timeout=0) is None


def test_claim_returns_none_after_its_timeout(backend: Backend) -> None:
    queue = backend.make()
    started = time.monotonic()
    assert queue.claim("w", timeout=0.3) is None
    assert 0.3 <= time.monotonic() - started < 1.5
    started = time.monotonic()
    assert queue.claim("w", timeout=0) is None
    assert time.monotonic() - started < 0.5


def _claim_blocked_in_a_thread(backend: Backend, queue: Queue) -> tuple[threading.Thread, dict[str, object]]:
    """Start a 20 s claim on ``queue`` in a thread and return once it is blocked; ``got`` receives the
    claimed job ("job") and the moment the claim returned ("at")."""
    blocked = backend.watch_blocked(queue)
    got: dict[str, object] = {}

    def claim() -> None:
        got["job"] = queue.claim("w", timeout=20)
        got["at"] = time.monotonic()

    thread = threading.Thread(target=claim)
    thread.start()
    wait_until(blocked, what="the claimer to block")
    return thread, got


def test_blocked_claim_wakes_as_soon_as_another_worker_enqueues(backend: Backend) -> None:
    consumer, producer = backend.make(), backend.make()
    thread, got = _claim_blocked_in_a_thread(backend, consumer)
    job = Job.new(7)
    pushed = time.monotonic()
    producer.enqueue(job)
    thread.join(timeout=10)

    assert isinstance(got["job"], Job) and got["job"].id == job.id
    # Redis and PostgreSQL wake within milliseconds; SQLite polls every 50 ms. The timeout was 20 s.
    assert got["at"] - pushed < 0.5  # type: ignore[operator]


def test_jobs_come_out_in_the_order_they_went_in(backend: Backend) -> None:
    queue = backend.make()
    jobs = [Job.new(n) for n in range(1, 8)]
    for job in jobs:
        queue.enqueue(job)
    claimed = [queue.claim("w", timeout=1) for _ in jobs]
    if backend.shards == 1:
        assert [c.id for c in claimed if c] == [j.id for j in jobs]
    else:  # first in, first out within each shard; the shards are read in turn
        assert sorted(c.id for c in claimed if c) == sorted(j.id for j in jobs)


def test_jobs_of_one_changeset_come_out_in_the_order_they_went_in(backend: Backend) -> None:
    queue = backend.make()
    jobs = [Job.new(5) for _ in range(6)]
    for job in jobs:
        queue.enqueue(job)
    claimed = [queue.claim("w", timeout=1) for _ in jobs]
    assert [c.id for c in claimed if c] == [j.id for j in jobs]


def test_retry_is_invisible_until_its_delay_has_passed(backend: Backend) -> None:
    queue = backend.make()
    queue.enqueue(Job.new(1))
    first = queue.claim("w", timeout=1)
    assert first is not None

    queue.retry(first, delay=1.0, reason="SMTP 451 try later")
    retried = time.monotonic()
    assert queue.claim("w", timeout=0) is None
    assert counts(queue.stats()) == (0, 0, 1, 0)

    again = queue.claim("w", timeout=5)
    waited = time.monotonic() - retried
    assert again is not None and again.id == first.id
    assert again.attempts == 1  # the retry settled the job: its claim count started again
    assert 0.9 <= waited < 2.5


def test_retry_without_delay_is_ready_at_once(backend: Backend) -> None:
    queue = backend.make()
    queue.enqueue(Job.new(1))
    first = queue.claim("w", timeout=1)
    assert first is not None
    queue.retry(first, delay=0, reason="transient")
    again = queue.claim("w", timeout=0)
    assert again is not None and again.id == first.id and again.attempts == 1


def test_expired_lease_passes_the_job_to_another_worker(backend: Backend) -> None:
    dying, healthy = backend.make(lease_seconds=LEASE), backend.make(lease_seconds=LEASE)
    dying.enqueue(Job.new(9))
    first = dying.claim("worker-a", timeout=1)
    assert first is not None

    started = time.monotonic()
    second = healthy.claim("worker-b", timeout=5)
    elapsed = time.monotonic() - started
    assert second is not None and second.id == first.id
    assert second.attempts == 2
    assert elapsed < LEASE + 1.0

    # The first worker lost the job: whatever it says late changes nothing.
    dying.ack(first)
    dying.retry(first, 0, "late")
    dying.dead(first, "late")
    assert counts(healthy.stats()) == (0, 1, 0, 0)
    with pytest.raises(LeaseLost):
        dying.extend(first)

    healthy.ack(second)
    assert counts(healthy.stats()) == (0, 0, 0, 0)


def test_extend_keeps_a_long_job_from_being_reclaimed(backend: Backend) -> None:
    owner, other = backend.make(lease_seconds=LEASE), backend.make(lease_seconds=LEASE)
    owner.enqueue(Job.new(9))
    job = owner.claim("owner", timeout=1)
    assert job is not None
    got: dict[str, object] = {}
    thread = threading.Thread(target=lambda: got.update(job=other.claim("other", timeout=3 * LEASE)))
    thread.start()
    heartbeat = threading.Event()
    while thread.is_alive():
        owner.extend(job)
        heartbeat.wait(LEASE / 4)  # a worker's heartbeat, well inside the lease
    assert got["job"] is None
    owner.ack(job)


def test_reclaim_stale_puts_expired_leases_back_in_line(backend: Backend) -> None:
    queue = backend.make(lease_seconds=LEASE)
    queue.enqueue(Job.new(3))
    job = queue.claim("a", timeout=1)
    assert job is not None
    assert queue.reclaim_stale() == 0
    assert wait_until(queue.reclaim_stale, what="the lease to expire") == 1
    assert counts(queue.stats()) == (1, 0, 0, 0)
    again = queue.claim("b", timeout=0)
    assert again is not None and again.id == job.id and again.attempts == 2


def test_retries_reset_the_attempt_count_so_a_long_outage_never_kills_a_job(backend: Backend) -> None:
    queue = backend.make(job_max_attempts=3)
    job = Job.new(5)
    queue.enqueue(job)
    for failure in range(10):  # far past the limit: each claim was settled by a retry
        claimed = queue.claim("w", timeout=1)
        assert claimed is not None and claimed.id == job.id and claimed.attempts == 1
        queue.retry(claimed, 0, f"SMTP 421 failure {failure}")
    assert counts(queue.stats()) == (1, 0, 0, 0)


def test_unsettled_claims_count_and_the_job_dies_past_the_limit_quoting_the_last_retry(
    backend: Backend,
) -> None:
    queue = backend.make(job_max_attempts=2)
    job = Job.new(5)
    queue.enqueue(job)
    first = queue.claim("w", timeout=1)
    assert first is not None and first.attempts == 1
    queue.retry(first, 0, "SMTP 451 greylisted")
    for attempt in (1, 2):  # the worker that takes it dies each time: released, never settled
        claimed = queue.claim(f"doomed-{attempt}", timeout=1)
        assert claimed is not None and claimed.attempts == attempt
        assert queue.release(f"doomed-{attempt}") == 1

    assert queue.claim("w", timeout=0) is None
    assert counts(queue.stats()) == (0, 0, 0, 1)
    [letter] = queue.dead_letters()
    assert (letter.job_id, letter.changeset_id, letter.attempts) == (job.id, 5, 2)
    assert "too many attempts" in letter.reason
    assert "SMTP 451 greylisted" in letter.reason
    assert decode_job(letter.raw).id == job.id


def test_a_job_whose_worker_keeps_dying_is_dead_lettered(backend: Backend) -> None:
    queue = backend.make(job_max_attempts=1, lease_seconds=LEASE)
    queue.enqueue(Job.new(6))
    assert queue.claim("doomed", timeout=1) is not None  # ...and the worker dies: no ack
    assert wait_until(lambda: queue.claim("next", timeout=0.2) is None and queue.stats().dead == 1)
    [letter] = queue.dead_letters()
    assert "too many attempts" in letter.reason and letter.attempts == 1


def test_malformed_payloads_are_dead_lettered_and_the_claim_goes_on(backend: Backend) -> None:
    queue = backend.make()
    some_id = uuid.uuid4().hex
    garbage = {
        b"not json at all": "not JSON",
        b'{"v": 2, "id": "' + some_id.encode() + b'", "changeset_id": 1, "enqueued_at": 1.0}': "version",
        b'{"v": 1, "id": "'
        + some_id.encode()
        + b'", "changeset_id": "12", "enqueued_at": 1.0}': "changeset_id",
        b'{"v": 1, "id": "'
        + some_id.encode()
        + b'", "changeset_id": true, "enqueued_at": 1.0}': "changeset_id",
        b'{"v": 1, "id": "'
        + some_id.encode()
        + b'", "changeset_id": -4, "enqueued_at": 1.0}': "changeset_id",
        b'{"v": 1, "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}': "larger than",
    }
    if backend.name == "redis":  # the SQL column is text: it cannot hold bytes that are not UTF-8
        garbage[b"\xff\xfe\x00binary"] = "not UTF-8"
    for raw in garbage:
        backend.insert_raw(raw)
    good = Job.new(77)
    queue.enqueue(good)

    claimed = queue.claim("w", timeout=1)
    assert claimed is not None and claimed.id == good.id

    letters = queue.dead_letters()
    assert len(letters) == len(garbage)
    for letter, (raw, why) in zip(letters, garbage.items(), strict=True):
        assert why in letter.reason
        assert letter.reason.startswith("malformed job")
        assert letter.changeset_id is None
        assert letter.raw[:20] == raw[:20].decode(
            "utf-8", "backslashreplace" if backend.name == "redis" else "replace"
        )
    assert counts(queue.stats()) == (0, 1, 0, len(garbage))


def test_dead_then_requeue_one(backend: Backend) -> None:
    queue = backend.make()
    job = Job.new(3)
    queue.enqueue(job)
    claimed = queue.claim("w", timeout=1)
    assert claimed is not None
    before = time.time()
    queue.dead(claimed, "recipient table is gone")
    assert counts(queue.stats()) == (0, 0, 0, 1)

    [letter] = queue.dead_letters()
    assert (letter.job_id, letter.changeset_id, letter.reason, letter.attempts) == (
        job.id,
        3,
        "recipient table is gone",
        1,
    )
    assert before - 1 <= letter.died_at <= time.time() + 1
    assert decode_job(letter.raw).id == job.id

    queue.enqueue(job)  # the queue holds this id (dead): not added twice
    assert counts(queue.stats()) == (0, 0, 0, 1)

    assert queue.requeue_dead(uuid.uuid4().hex) == 0
    assert queue.requeue_dead(job.id) == 1
    assert counts(queue.stats()) == (1, 0, 0, 0)
    again = queue.claim("w", timeout=0)
    assert again is not None and again.id == job.id and again.attempts == 1
    assert again.enqueued_at >= job.enqueued_at
    queue.ack(again)


def test_requeue_all_leaves_malformed_letters_and_purge_removes_them(backend: Backend) -> None:
    queue = backend.make()
    jobs = [Job.new(n) for n in (1, 2, 3)]
    for job in jobs:
        queue.enqueue(job)
    died: list[str] = []
    for _ in jobs:
        claimed = queue.claim("w", timeout=1)
        assert claimed is not None
        queue.dead(claimed, "no")
        died.append(claimed.id)
    backend.insert_raw(b"garbage")
    assert queue.claim("w", timeout=0) is None
    assert counts(queue.stats()) == (0, 0, 0, 4)
    assert [letter.job_id for letter in queue.dead_letters(limit=2)] == died[:2]
    assert queue.dead_letters(limit=0) == []

    assert queue.requeue_dead() == 3
    assert counts(queue.stats()) == (3, 0, 0, 1)
    assert queue.purge_dead() == 1
    assert queue.dead_letters() == []
    assert counts(queue.stats()) == (3, 0, 0, 0)


def test_stats_count_each_state(backend: Backend) -> None:
    queue = backend.make()
    old = Job(id=uuid.uuid4().hex, changeset_id=1, enqueued_at=time.time() - 100)
    queue.enqueue(old)
    for _ in range(4):  # one changeset: one shard, so first in, first out
        queue.enqueue(Job.new(1))
    in_flight = queue.claim("w", timeout=1)
    to_retry = queue.claim("w", timeout=1)
    to_kill = queue.claim("w", timeout=1)
    assert in_flight is not None and to_retry is not None and to_kill is not None
    assert in_flight.id == old.id
    queue.retry(to_retry, 60, "later")
    queue.dead(to_kill, "no")

    stats = queue.stats()
    assert counts(stats) == (2, 1, 1, 1)
    assert 99 < stats.oldest_age_seconds < 130  # the in-flight job counts: it is not done


def test_enqueue_is_a_no_op_for_a_job_already_queued(backend: Backend) -> None:
    queue = backend.make()
    job = Job.new(1)
    queue.enqueue(job)
    queue.enqueue(job)
    assert counts(queue.stats()) == (1, 0, 0, 0)
    claimed = queue.claim("w", timeout=1)
    assert claimed is not None
    queue.enqueue(job)
    assert counts(queue.stats()) == (0, 1, 0, 0)
    queue.retry(claimed, 60, "later")
    queue.enqueue(job)
    assert counts(queue.stats()) == (0, 0, 1, 0)


def test_concurrent_claimers_take_every_job_exactly_once(backend: Backend) -> None:
    jobs = [Job.new(n) for n in range(1, 81)]
    shared = backend.make()
    queues = [shared, shared, shared, backend.make(), backend.make(), backend.make()]
    claimed: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def work(index: int) -> None:
        queue = queues[index]
        try:
            while not all_done.is_set():
                job = queue.claim(f"w{index}", timeout=0.2)
                if job is None:
                    continue
                queue.ack(job)
                with lock:
                    claimed.append(job.id)
                    if len(claimed) >= len(jobs):
                        all_done.set()
        except BaseException as exc:
            errors.append(exc)
            all_done.set()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(queues))]
    for thread in threads:
        thread.start()
    producer = backend.make()
    for job in jobs:
        producer.enqueue(job)
    assert all_done.wait(timeout=30)
    for thread in threads:
        thread.join(timeout=5)

    assert errors == []
    assert sorted(claimed) == sorted(job.id for job in jobs)
    assert counts(producer.stats()) == (0, 0, 0, 0)


def test_ack_of_a_job_that_was_never_claimed_is_a_caller_bug(backend: Backend) -> None:
    queue = backend.make()
    with pytest.raises(ValueError, match="not claimed"):
        queue.ack(Job.new(1))


def test_close_releases_a_claim_blocked_in_another_thread(backend: Backend) -> None:
    queue = backend.make()
    thread, got = _claim_blocked_in_a_thread(backend, queue)
    closed = time.monotonic()
    queue.close()
    thread.join(timeout=5)
    assert got["job"] is None
    assert got["at"] - closed < 1.5  # type: ignore[operator]


def test_ping_and_context_manager(backend: Backend) -> None:
    with backend.make() as queue:
        queue.ping()


# --- release: a dead worker's jobs go back at once ---------------------------------------------------


def test_release_hands_a_dead_workers_jobs_to_the_next_claim_at_once(backend: Backend) -> None:
    dead_worker, supervisor, healthy = backend.make(), backend.make(), backend.make()
    jobs = [Job.new(n) for n in (1, 2, 3)]
    for job in jobs:
        dead_worker.enqueue(job)
    held = dead_worker.claim_batch("w1", 2, timeout=1)
    other = healthy.claim("w2", timeout=1)
    assert len(held) == 2 and other is not None
    assert supervisor.release("w1") == 2  # the lease (30 s by default) has not run out
    assert supervisor.release("w1") == 0
    assert supervisor.release("nobody") == 0

    again = healthy.claim_batch("w2", 10, timeout=0)
    assert sorted(j.id for j in again) == sorted(j.id for j in held)
    assert all(j.attempts == 2 for j in again)  # release does not settle: the claim still counts

    # The released worker's late verdicts change nothing; the new holder's count.
    for job in held:
        dead_worker.ack(job)
        dead_worker.retry(job, 0, "late")
        dead_worker.dead(job, "late")
    assert dead_worker.extend_batch(held) == held
    assert counts(healthy.stats()) == (0, 3, 0, 0)
    for job in [*again, other]:
        healthy.ack(job)
    assert counts(healthy.stats()) == (0, 0, 0, 0)


def test_release_wakes_a_claimer_that_is_already_waiting(backend: Backend) -> None:
    owner, waiter = backend.make(), backend.make()
    owner.enqueue(Job.new(4))
    held = owner.claim("w1", timeout=1)
    assert held is not None
    thread, got = _claim_blocked_in_a_thread(backend, waiter)
    released = time.monotonic()
    assert owner.release("w1") == 1
    thread.join(timeout=10)
    assert isinstance(got["job"], Job) and got["job"].id == held.id
    assert got["at"] - released < 1.5  # type: ignore[operator]


def test_release_leaves_other_consumers_jobs_alone(backend: Backend) -> None:
    queue = backend.make()
    queue.enqueue(Job.new(1))
    mine = queue.claim("w1", timeout=1)
    assert mine is not None
    assert queue.release("w2") == 0
    assert queue.extend_batch([mine]) == []
    queue.ack(mine)
    assert counts(queue.stats()) == (0, 0, 0, 0)


# --- batches ------------------------------------------------------------------------------------------


def test_claim_batch_takes_up_to_max_jobs_in_order(backend: Backend) -> None:
    queue = backend.make()
    jobs = [Job.new(3) for _ in range(7)]  # one changeset: one shard, so first in, first out
    for job in jobs:
        queue.enqueue(job)
    first = queue.claim_batch("w", 5, timeout=1)
    assert [j.id for j in first] == [j.id for j in jobs[:5]]
    assert all(j.attempts == 1 and j.receipt for j in first)
    assert len({j.receipt for j in first}) == 5
    rest = queue.claim_batch("w", 5, timeout=1)
    assert [j.id for j in rest] == [j.id for j in jobs[5:]]
    assert queue.claim_batch("w", 5, timeout=0) == []
    assert counts(queue.stats()) == (0, 7, 0, 0)
    for job in [*first, *rest]:
        queue.ack(job)
    assert counts(queue.stats()) == (0, 0, 0, 0)


def test_claim_batch_fills_from_every_shard(backend: Backend) -> None:
    queue = backend.make()
    jobs = [Job.new(n) for n in range(1, 41)]
    for job in jobs:
        queue.enqueue(job)
    first = queue.claim_batch("w", 30, timeout=1)
    rest = queue.claim_batch("w", 30, timeout=1)
    assert len(first) == 30 and len(rest) == 10
    assert sorted(j.id for j in [*first, *rest]) == sorted(j.id for j in jobs)
    assert len({j.receipt for j in [*first, *rest]}) == 40
    assert queue.claim_batch("w", 5, timeout=0) == []
    assert counts(queue.stats()) == (0, 40, 0, 0)
    for job in [*first, *rest]:
        queue.ack(job)
    assert counts(queue.stats()) == (0, 0, 0, 0)


def test_claim_batch_returns_as_soon_as_one_job_is_there(backend: Backend) -> None:
    consumer, producer = backend.make(), backend.make()
    blocked = backend.watch_blocked(consumer)
    got: dict[str, object] = {}

    def claim() -> None:
        got["jobs"] = consumer.claim_batch("w", 32, timeout=20)
        got["at"] = time.monotonic()

    thread = threading.Thread(target=claim)
    thread.start()
    wait_until(blocked, what="the claimer to block")
    job = Job.new(3)
    pushed = time.monotonic()
    producer.enqueue(job)
    thread.join(timeout=10)
    assert [j.id for j in got["jobs"]] == [job.id]  # type: ignore[attr-defined]
    assert got["at"] - pushed < 0.5  # type: ignore[operator]


def test_claim_batch_takes_due_retries_and_expired_leases(backend: Backend) -> None:
    queue = backend.make(lease_seconds=LEASE)
    for n in (1, 2, 3):
        queue.enqueue(Job.new(n))
    to_retry, abandoned, _ = queue.claim_batch("a", 3, timeout=1)
    queue.retry(to_retry, 0.2, "later")
    queue.ack(_)
    got: list[Job] = []
    wait_until(lambda: got.extend(queue.claim_batch("b", 10, timeout=0.2)) or len(got) >= 2)
    assert sorted(j.id for j in got) == sorted([to_retry.id, abandoned.id])
    assert {j.id: j.attempts for j in got} == {to_retry.id: 1, abandoned.id: 2}


def test_claim_batch_refuses_a_batch_size_that_is_not_one(backend: Backend) -> None:
    queue = backend.make()
    for bad in (0, -1, 10_000, 2.5, True):
        with pytest.raises(ValueError, match="max_jobs"):
            queue.claim_batch("w", bad, timeout=0)  # type: ignore[arg-type]


def test_extend_batch_renews_leases_and_names_the_lost_ones(backend: Backend) -> None:
    keeper, other = backend.make(lease_seconds=LEASE), backend.make(lease_seconds=LEASE)
    for n in (1, 2, 3):
        keeper.enqueue(Job.new(n))
    kept, settled, lost = keeper.claim_batch("keeper", 3, timeout=1)
    keeper.ack(settled)
    assert keeper.extend_batch([]) == []

    # Keep two leases alive past several lease lengths, one round trip each time; let the third expire.
    taken: list[Job] = []
    beat = threading.Event()
    deadline = time.monotonic() + 3 * LEASE
    while time.monotonic() < deadline:
        assert keeper.extend_batch([kept]) == []
        for job in other.claim_batch("other", 10, timeout=0):
            other.ack(job)
            taken.append(job)
        beat.wait(LEASE / 4)
    assert [j.id for j in taken] == [lost.id]
    assert keeper.extend_batch([kept, lost, settled]) == [lost, settled]
    with pytest.raises(LeaseLost):
        keeper.extend(lost)
    keeper.extend(kept)
    keeper.ack(kept)
    assert counts(keeper.stats()) == (0, 0, 0, 0)


def test_discard_one_dead_letter(backend: Backend) -> None:
    queue = backend.make()
    jobs = [Job.new(n) for n in (1, 2)]
    for job in jobs:
        queue.enqueue(job)
        claimed = queue.claim("w", timeout=1)
        assert claimed is not None
        queue.dead(claimed, "no")
    assert queue.purge_dead(jobs[0].id) == 1
    assert queue.purge_dead(jobs[0].id) == 0  # already gone: nothing to do, no error
    assert queue.purge_dead("f" * 32) == 0
    assert [letter.job_id for letter in queue.dead_letters()] == [jobs[1].id]
    assert counts(queue.stats()) == (0, 0, 0, 1)
