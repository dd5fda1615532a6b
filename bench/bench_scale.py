"""Scale figures of the Redis queue (issue 10): memory per queued job, drain rate against the backlog, and
throughput with 1, 2 and 4 worker processes on one Redis Cluster.

1. **Memory and drain** on one ``redis-server`` (started here: no persistence, so that loading 1M jobs
   measures the queue and not the disk), ``queue_shards = 4``. For each backlog (1k, 100k, 1M jobs): fill
   the queue with the enqueue script (pipelined, 1,000 per round trip), read ``used_memory`` before and
   after (INFO memory) and the sum of ``MEMORY USAGE`` over the queue's keys. Then drain 500 jobs from
   each backlog in turn, several rounds, topping each backlog up after its turn (untimed), so every size
   shares the machine's noise; the median round is reported. One consumer drains as a worker does:
   ``claim_batch(100)`` then one ``ack`` per job. What is measured is the queue layer (claim + ack round
   trips and the scripts), not delivery.
2. **Workers on a Cluster**: 3 masters + 3 replicas (``redis-server --cluster-enabled yes``), a backlog of
   jobs spread over the 4 shards, drained by 1, 2 and 4 processes (each: claim_batch(50), ack each job);
   jobs per second from the first claim to the empty queue, and the CPU the workers and the Redis servers
   used. The worker counts take turns, several rounds; the median round per count is reported.

Run it with::

    .venv/bin/python bench/bench_scale.py                  # 1k, 100k, 1M; 1/2/4 workers
    .venv/bin/python bench/bench_scale.py --sizes 1000,100000 --cluster-rounds 1   # quicker
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
from tests.support.redis_ha import ClusterSet
from tests.support.services import free_port

from herald.config import Settings
from herald.queue import Job
from herald.queue.redis_backend import RedisQueue

FILL_BATCH = 1000
#: Jobs drained per backlog per round.
DRAIN_STEP = 500


def fill(queue: RedisQueue, count: int, first_changeset: int = 1, port: int | None = None) -> None:
    """``count`` jobs through the enqueue script (a front end pushes one at a time; this runs the same
    script, only faster: pipelined, or for large counts piped in as raw protocol by ``redis-cli --pipe``)."""
    client = queue._client  # a benchmark of the queue's own storage
    script = queue._scripts.enqueue
    if port is not None and count >= 10_000:
        sha = client.script_load(script.script)
        with tempfile.NamedTemporaryFile("wb", suffix=".resp") as out:
            for n in range(count):
                job = Job.new(first_changeset + n)
                k = queue.keys.shard_for(job.changeset_id)
                out.write(
                    _resp(
                        "EVALSHA",
                        sha,
                        "3",
                        k.stream,
                        k.live,
                        k.dead,
                        job.id,
                        job.to_json(),
                        repr(job.enqueued_at),
                    )
                )
            out.flush()
            with open(out.name, "rb") as data:
                subprocess.run(
                    [shutil.which("redis-cli") or "redis-cli", "-p", str(port), "--pipe"],
                    stdin=data, check=True, stdout=subprocess.DEVNULL,
                )  # fmt: skip
        return
    for start in range(0, count, FILL_BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + FILL_BATCH)):
            job = Job.new(first_changeset + n)
            k = queue.keys.shard_for(job.changeset_id)
            args = [job.id, job.to_json(), repr(job.enqueued_at)]
            script(keys=[k.stream, k.live, k.dead], args=args, client=pipe)
        pipe.execute()


def _resp(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


def drain(queue: RedisQueue, count: int) -> float:
    """Claim and ack ``count`` jobs as one worker does; returns jobs per second."""
    done = 0
    started = time.perf_counter()
    while done < count:
        jobs = queue.claim_batch("bench", min(100, count - done), timeout=1)
        if not jobs:
            raise RuntimeError(f"the queue ran dry after {done} jobs")
        for job in jobs:
            queue.ack(job)
        done += len(jobs)
    return done / (time.perf_counter() - started)


def key_bytes(client: redis.Redis, queue: RedisQueue) -> int:
    total = 0
    for key in queue.keys.all():
        usage = client.memory_usage(key, samples=0)
        total += usage or 0
    return total


def memory_and_drain(sizes: list[int], workdir: Path, rounds: int) -> list[dict[str, float]]:
    """Fill one namespace per backlog size (memory measured per fill), then drain DRAIN_STEP jobs from
    each in turn, ``rounds`` times, topping every backlog up again after its turn (untimed), so that all
    sizes share the machine's noise and keep their size; the median round is reported."""
    port = free_port()
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    rows: list[dict[str, float]] = []
    try:
        client = redis.Redis(port=port)
        _wait_ping(client)
        queues: dict[int, RedisQueue] = {}
        for size in sizes:
            url = f"redis://127.0.0.1:{port}/0"
            queue = RedisQueue(
                Settings(queue_backend="redis", redis_url=url, redis_namespace=f"bench-{size}")
            )
            queue.ping()
            fill(queue, 10)  # streams, groups and scripts exist before the baseline
            drain(queue, 10)
            before, keys_before = int(client.info("memory")["used_memory"]), key_bytes(client, queue)
            started = time.perf_counter()
            fill(queue, size, port=port)
            fill_seconds = time.perf_counter() - started
            after, keys_after = int(client.info("memory")["used_memory"]), key_bytes(client, queue)
            queues[size] = queue
            rows.append(
                {
                    "size": size,
                    "per_job_info": (after - before) / size,
                    "per_job_keys": (keys_after - keys_before) / size,
                    "fill_seconds": fill_seconds,
                    "used_memory_mib": after / 2**20,
                }
            )
            print(
                f"backlog {size:>9,}: {rows[-1]['per_job_info']:.0f} B/job (INFO used_memory), "
                f"{rows[-1]['per_job_keys']:.0f} B/job (MEMORY USAGE), filled in {fill_seconds:.1f}s",
                flush=True,
            )
        rates: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(rounds):
            for size, queue in queues.items():
                step = min(DRAIN_STEP, size // 2)
                rates[size].append(drain(queue, step))
                fill(queue, step, first_changeset=10**9 + len(rates[size]) * step)  # back to its size
        for row in rows:
            row["drain_rate"] = statistics.median(rates[int(row["size"])])
            print(
                f"backlog {int(row['size']):>9,}: drain {row['drain_rate']:,.0f} jobs/s (median of {rounds})"
            )
        for queue in queues.values():
            queue.close()
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows


def _wait_ping(client: redis.Redis) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _worker(url: str, namespace: str, ready: multiprocessing.Event, go: multiprocessing.Event, out) -> None:  # type: ignore[no-untyped-def,valid-type]
    queue = RedisQueue(
        Settings(queue_backend="redis", redis_url=url, redis_cluster=True, redis_namespace=namespace)
    )
    queue.ping()
    ready.set()
    go.wait()
    done = 0
    misses = 0
    started = time.perf_counter()
    last = started
    while misses < 2:
        jobs = queue.claim_batch(f"w-{multiprocessing.current_process().pid}", 50, timeout=0.2)
        if not jobs:
            misses += 1
            continue
        misses = 0
        for job in jobs:
            queue.ack(job)
        done += len(jobs)
        last = time.perf_counter()
    out.put((done, started, last, time.process_time()))
    queue.close()


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def cluster_workers(counts: list[int], jobs: int, rounds: int, workdir: Path) -> list[dict[str, float]]:
    """Each round runs every worker count once, in turn, so the counts share the machine's noise; the
    median round per count is reported."""
    cluster = ClusterSet(workdir / "cluster")
    (workdir / "cluster").mkdir()
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    try:
        cluster.start()
        for round_ in range(rounds):
            for n_workers in counts:
                runs[n_workers].append(
                    _one_cluster_run(cluster, n_workers, jobs, f"bench-r{round_}-w{n_workers}")
                )
    finally:
        cluster.stop()
    rows = []
    for n_workers, results in runs.items():
        median = sorted(results, key=lambda r: r["rate"])[len(results) // 2]
        rows.append({"workers": n_workers, **median})
    return rows


def _one_cluster_run(cluster: ClusterSet, n_workers: int, jobs: int, namespace: str) -> dict[str, float]:
    url = cluster.url()
    queue = RedisQueue(
        Settings(queue_backend="redis", redis_url=url, redis_cluster=True, redis_namespace=namespace)
    )
    queue.ping()
    for n in range(jobs):  # no pipelines across a cluster: one push each, as a front end does
        queue.enqueue(Job.new(n + 1))
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(n_workers)]
    procs = [ctx.Process(target=_worker, args=(url, namespace, r, go, out)) for r in readies]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(60)
    pids = [n.process.pid for n in cluster.nodes if n.process is not None]
    redis_cpu = _cpu_seconds(pids)
    load = os.getloadavg()[0]
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    redis_cpu = _cpu_seconds(pids) - redis_cpu
    for p in procs:
        p.join(30)
    queue.close()
    done = sum(r[0] for r in results)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    worker_cpu = sum(r[3] for r in results)
    print(
        f"{n_workers} worker process(es): {done:,} jobs in {elapsed:.1f}s = {done / elapsed:,.0f} jobs/s; "
        f"CPU busy: workers {worker_cpu / elapsed:.2f}, redis {redis_cpu / elapsed:.2f} cores "
        f"(load before {load:.1f})",
        flush=True,
    )
    return {
        "jobs": done,
        "rate": done / elapsed,
        "worker_cpu": worker_cpu / elapsed,
        "redis_cpu": redis_cpu / elapsed,
        "cpu_per_job_us": (worker_cpu + redis_cpu) / done * 1e6,
        "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--cluster-jobs", type=int, default=20_000)
    parser.add_argument("--cluster-rounds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="herald-scale-"))
    try:
        rows = memory_and_drain([int(s) for s in args.sizes.split(",")], workdir, args.rounds)
        base = rows[0]["drain_rate"]
        print(
            "\n| backlog | B per job (used_memory) | B per job (MEMORY USAGE) | drain jobs/s | vs smallest |"
        )
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {int(r['size']):,} | {r['per_job_info']:.0f} | {r['per_job_keys']:.0f} | "
                f"{r['drain_rate']:,.0f} | {r['drain_rate'] / base - 1:+.1%} |"
            )
        if not args.skip_cluster:
            wrows = cluster_workers(
                [int(w) for w in args.workers.split(",")], args.cluster_jobs, args.cluster_rounds, workdir
            )
            one = wrows[0]["rate"]
            print("\n| worker processes | jobs/s | vs 1 | cores busy: workers + Redis | CPU per job |")
            print("|---|---|---|---|---|")
            for r in wrows:
                print(
                    f"| {int(r['workers'])} | {r['rate']:,.0f} | {r['rate'] / one:.2f}x | "
                    f"{r['worker_cpu']:.2f} + {r['redis_cpu']:.2f} | {r['cpu_per_job_us']:.0f} µs |"
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
