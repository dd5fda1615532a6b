"""herald's delivery beside Celery, Dramatiq, huey and RQ: the same workloads, interleaved, in one run.

    sh bench/peers/setup.sh                                   # once: the peers' own virtualenv
    .venv/bin/python bench/compare.py [--quick] [--only e2e-50,drain-slow,...] [--systems herald,celery]
                                      [--rounds N] [--database postgresql://postgres@127.0.0.1:5432/]
                                      [--herald-set worker_concurrency=32] [--json results.json]

Workloads (``--only``): e2e-50, e2e-200 (enqueue -> SMTP accepted at 50 and 200 changes/s into the recording
relay), drain-fast (a queued backlog into postfix's smtp-sink), drain-slow (into a relay answering DATA after
50 ms), kill (SIGKILL one of the two job-running processes mid-drain; lost and duplicated counted at the
recording relay), request (herald's request latency async vs notifications off: bench/bench_async.py).

Within each workload and round the systems run one after the other in a shuffled order, each with a fresh
redis-server (password, appendonly), a fresh relay process and, for herald, a fresh copy of the seeded
database, so that they share the machine's drift and nothing carries over. Every figure is measured: the
relays timestamp what they accept, the enqueue stamps are taken just before each enqueue call.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_async
from relays import RecordingRelay, SinkRelay
from systems import HERALD_RECIPIENTS, Herald, Load, Peer, System, peer_versions

PROFILES: dict[str, dict[str, float]] = {
    # seconds of paced load, its warm-up, the wait after it; changes queued for a drain / a kill; the
    # longest wait for a drain, and after a kill; bench_async's requests per mode and paced requests
    "quick": {"paced": 5, "warmup": 1, "grace": 5, "drain": 200, "drain_timeout": 90, "kill": 150,
              "kill_window": 35, "outage": 30, "outage_window": 60, "requests": 100, "async_paced": 50},
    "full": {"paced": 20, "warmup": 3, "grace": 10, "drain": 1000, "drain_timeout": 300, "kill": 1000,
             "kill_window": 90, "outage": 180, "outage_window": 120, "requests": 300, "async_paced": 200},
}  # fmt: skip
WORKLOADS = ("e2e-50", "e2e-200", "drain-fast", "drain-slow", "kill", "outage", "request")
PEERS = ("celery", "dramatiq", "huey", "rq")
ARTIFACTS = 200  # PATCHes rotate over them so that concurrent requests rarely touch the same artifact
KILL_AT = 0.3  # share of the mails delivered when a job-running process is killed


def pct(values: list[float], p: float) -> float:
    return bench_async.pct(values, p) if values else float("nan")


def wait_until(predicate: Callable[[], bool], deadline: float, step: float = 0.02) -> bool:
    while not predicate():
        if time.time() > deadline:
            return False
        time.sleep(step)
    return True


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile = PROFILES["quick" if args.quick else "full"]
        self.tmp = Path(tempfile.mkdtemp(prefix="herald-compare-"))
        self.runs = 0
        self.next_id = 1_000_000  # the peers' change ids, unique across the run
        self.databases: list[str] = []

    # --- set-up -------------------------------------------------------------------------------------

    def systems(self) -> list[System]:
        wanted = self.args.systems.split(",") if self.args.systems else ["herald", *PEERS]
        out: list[System] = []
        versions = peer_versions() if set(wanted) & set(PEERS) else {}
        for name in wanted:
            if name == "herald":
                out.append(self.herald())
            elif name in PEERS:
                out.append(Peer(name, versions))
            else:
                raise SystemExit(f"unknown system {name!r}: herald, {', '.join(PEERS)}")
        return out

    def herald(self) -> Herald:
        """Seed a template data dir once (project, tracker, artifacts with 3 recipients each, as
        bench_async does); every herald run gets a copy of it (or, on PostgreSQL, a database made from
        the seeded one as TEMPLATE)."""
        from herald.config import ensure_secrets, load_settings
        from herald.tracker.db import Database
        from herald.tracker.schema import upgrade

        template = self.tmp / "herald-template"
        template.mkdir()
        url = f"sqlite:///{template / 'herald.db'}"
        if self.args.database:
            url = self.pg_create("herald_bench_seed")
        settings = ensure_secrets(
            load_settings(env={"HERALD_DATA_DIR": str(template), "HERALD_DATABASE_URL": url})
        )
        db = Database(settings.database_url)
        upgrade(db.engine)
        bench_async.ARTIFACTS = ARTIFACTS
        token, artifacts = bench_async.build(db)
        db.dispose()
        extra = dict(kv.split("=", 1) for kv in self.args.herald_set)
        herald = Herald(template, token, artifacts, None, extra, self.args.herald_python)
        if self.args.database:
            herald.fresh_database = lambda: self.pg_create(f"herald_bench_{self.runs}", "herald_bench_seed")
        return herald

    def pg_create(self, name: str, template: str | None = None) -> str:
        import sqlalchemy as sa

        base = sa.make_url(self.args.database)
        admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(
                sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
            )
        admin.dispose()
        self.databases.append(name)
        return base.set(database=name).render_as_string(hide_password=False)

    def pg_drop_all(self) -> None:
        if not self.args.database or not self.databases:
            return
        import sqlalchemy as sa

        base = sa.make_url(self.args.database)
        admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in set(self.databases):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    # --- one run ------------------------------------------------------------------------------------

    def run(self, system: System, relay_factory: Callable[[], Any], body: Callable[..., dict[str, Any]],
            workload: str) -> dict[str, Any]:  # fmt: skip
        self.runs += 1
        run_dir = self.tmp / f"{self.runs:03d}-{workload}-{system.name}"
        run_dir.mkdir()
        redis = relay = None
        try:
            redis = bench_async.RedisProcess(run_dir)
            relay = relay_factory()
            if isinstance(system, Herald) and getattr(system, "fresh_database", None):
                system.database = system.fresh_database()
            system.prepare(run_dir, redis.url, redis.port, redis.password, relay.port)
            result = body(system, relay)
        finally:
            system.stop()
            if relay is not None:
                relay.stop()
            if redis is not None:
                redis.stop()
        result["system"] = system.name
        print(f"  {workload:<10} {system.name:<9} " + _brief(result), flush=True)
        return result

    def load(self, system: System, count: int, rate: float) -> Load:
        start, self.next_id = self.next_id, self.next_id + count
        return system.enqueue(start, count, rate)

    # --- the workloads ------------------------------------------------------------------------------

    def e2e(self, rate: float) -> Callable[..., dict[str, Any]]:
        p = self.profile

        def body(system: System, relay: RecordingRelay) -> dict[str, Any]:
            system.start_workers()
            warm = self.load(system, int(rate * p["warmup"]), rate)
            warm_done = wait_until(lambda: _unique(relay, warm) >= 3 * len(warm.ids), time.time() + 30)
            load = self.load(system, int(rate * p["paced"]), rate)
            expected = 3 * len(load.ids)
            wait_until(lambda: _unique(relay, load) >= expected, load.last + p["grace"])
            stats = _count(relay, load)
            at_end = sum(1 for t in stats["first_at"] if t <= load.last)
            return {
                "offered": rate,
                "achieved": len(load.ids) / max(load.last - load.first, 1e-9),
                "enqueue_failed": load.failed,
                "enqueue_errors": load.errors,
                "warmup_drained": warm_done,
                "expected": expected,
                "delivered": stats["unique"],
                "duplicated": stats["duplicated"],
                "p50_ms": pct(stats["latency_ms"], 50),
                "p99_ms": pct(stats["latency_ms"], 99),
                "max_ms": max(stats["latency_ms"], default=float("nan")),
                "backlog_at_end": expected - at_end,
                "undelivered_after_grace": expected - stats["unique"],
            }

        return body

    def drain(self, record: bool) -> Callable[..., dict[str, Any]]:
        p = self.profile

        def body(system: System, relay: Any) -> dict[str, Any]:
            load = self.load(system, int(p["drain"]), 0)
            expected = 3 * len(load.ids)
            launched = time.time()
            system.start_workers()
            done = wait_until(lambda: relay.count() >= expected, launched + p["drain_timeout"], 0.01)
            times = sorted(relay.times())[:expected]
            result: dict[str, Any] = {
                "expected": expected,
                "delivered": len(times),
                "complete": done,
                "launch_to_last_s": times[-1] - launched if times else float("nan"),
                "first_to_last_s": times[-1] - times[0] if times else float("nan"),
            }
            result["mails_per_s"] = len(times) / result["launch_to_last_s"]
            result["steady_mails_per_s"] = (len(times) - 1) / max(result["first_to_last_s"], 1e-9)
            if record:
                stats = _count(relay, load)
                result["delivered"], result["duplicated"] = stats["unique"], stats["duplicated"]
            return result

        return body

    def kill(self) -> Callable[..., dict[str, Any]]:
        p = self.profile

        def body(system: System, relay: RecordingRelay) -> dict[str, Any]:
            load = self.load(system, int(p["kill"]), 0)
            expected = 3 * len(load.ids)
            launched = time.time()
            system.start_workers()
            processes = system.job_processes()
            if len(processes) < 2:
                raise SystemExit(f"{system.name}: found {len(processes)} job-running processes, not 2")
            wait_until(
                lambda: _unique(relay, load) >= KILL_AT * expected, launched + p["drain_timeout"], 0.005
            )
            victim = processes[0]
            killed_at = time.time()
            system.kill_job_process(victim)  # type: ignore[attr-defined]
            delivered_before = _unique(relay, load)
            complete = wait_until(lambda: _unique(relay, load) >= expected, killed_at + p["kill_window"])
            time.sleep(2)  # a duplicate sent just after the last unique mail still counts
            stats = _count(relay, load)
            last = max(stats["first_at"], default=killed_at)
            return {
                "expected": expected,
                "delivered_at_kill": delivered_before,
                "complete": complete,
                "kill_to_last_s": last - killed_at,
                "launch_to_last_s": last - launched,
                "delivered": stats["unique"],
                "lost": expected - stats["unique"],
                "duplicated": stats["duplicated"],
                "window_s": p["kill_window"],
            }

        return body

    def outage(self) -> Callable[..., dict[str, Any]]:
        """Changes go on while the relay is down for ``outage`` seconds: what each system delivers once it
        is back (the relay comes back on the same port), and how long after its return the last mail
        arrives. A job that fails is left to the library's own default retry behaviour."""
        p = self.profile

        def body(system: System, relay: RecordingRelay) -> dict[str, Any]:
            system.start_workers()
            rate = 10.0
            before = self.load(system, int(rate * 2), rate)
            wait_until(lambda: _unique(relay, before) >= 3 * len(before.ids), time.time() + 30)
            port, earlier = relay.port, relay.snapshot()
            relay.stop()
            down_at = time.time()
            during = self.load(system, int(rate * min(p["outage"], 20)), rate)
            wait_until(lambda: False, down_at + p["outage"], 0.2)
            back = RecordingRelay(port=port)
            back_at = time.time()
            try:
                back.arrivals[:0] = earlier
                expected = 3 * len(during.ids)
                complete = wait_until(lambda: _unique(back, during) >= expected, back_at + p["outage_window"])
                time.sleep(2)
                stats = _count(back, during)
            finally:
                back.stop()
            last = max(stats["first_at"], default=back_at)
            return {
                "outage_s": back_at - down_at,
                "expected": expected,
                "delivered": stats["unique"],
                "lost": expected - stats["unique"],
                "duplicated": stats["duplicated"],
                "complete": complete,
                "return_to_last_s": last - back_at,
                "window_s": p["outage_window"],
            }

        return body

    def request(self) -> None:
        """herald only: bench_async.py's interleaved off / async / inline request latency."""
        p = self.profile
        argv = [self.args.herald_python, str(Path(__file__).resolve().parent / "bench_async.py"),
                "--requests", str(int(p["requests"])), "--paced", str(int(p["async_paced"]))]  # fmt: skip
        if self.args.database:
            argv += ["--database", self.pg_create("herald_bench_async")]
        print("\n## request: herald request latency, async vs notifications off (bench/bench_async.py)")
        print("$ " + " ".join(argv[1:]), flush=True)
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        print(out.stdout)
        if out.returncode != 0:
            print(out.stderr[-3000:])
        self.results["request"] = out.stdout


def _unique(relay: RecordingRelay, load: Load) -> int:
    return len({(a.change, a.rcpt) for a in relay.snapshot() if a.change in load.ids})


def _count(relay: RecordingRelay, load: Load) -> dict[str, Any]:
    """Per (change, recipient): the first arrival's latency from its enqueue stamp; repeats are duplicates."""
    seen: Counter[tuple[int, str]] = Counter()
    latency: list[float] = []
    first_at: list[float] = []
    for a in sorted(relay.snapshot(), key=lambda a: a.at):
        if a.change not in load.ids:
            continue
        key = (a.change, a.rcpt)
        seen[key] += 1
        if seen[key] > 1:
            continue
        stamp = load.stamps.get(a.change, a.enqueued)
        if stamp is not None:
            latency.append((a.at - stamp) * 1000)
        first_at.append(a.at)
    return {
        "unique": len(seen),
        "duplicated": sum(n - 1 for n in seen.values()),
        "latency_ms": latency,
        "first_at": first_at,
    }


def _brief(r: dict[str, Any]) -> str:
    keys = (
        "delivered",
        "p50_ms",
        "p99_ms",
        "backlog_at_end",
        "mails_per_s",
        "kill_to_last_s",
        "lost",
        "duplicated",
    )
    return ", ".join(
        f"{k}={r[k]:.1f}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in keys if r.get(k)
    )


# --- the tables -----------------------------------------------------------------------------------------

COLUMNS = {
    "e2e": [("achieved", "enq/s", ".0f"), ("p50_ms", "p50 ms", ".1f"), ("p99_ms", "p99 ms", ".1f"),
            ("max_ms", "max ms", ".1f"), ("backlog_at_end", "backlog@end", "d"),
            ("undelivered_after_grace", "undeliv.", "d"), ("duplicated", "dup", "d"),
            ("enqueue_failed", "enq err", "d")],
    "drain": [("delivered", "mails", "d"), ("launch_to_last_s", "launch->last s", ".2f"),
              ("mails_per_s", "mails/s", ".0f"), ("first_to_last_s", "first->last s", ".2f"),
              ("steady_mails_per_s", "steady/s", ".0f")],
    "kill": [("delivered_at_kill", "at kill", "d"), ("kill_to_last_s", "kill->last s", ".2f"),
             ("launch_to_last_s", "launch->last s", ".2f"), ("delivered", "delivered", "d"),
             ("lost", "lost", "d"), ("duplicated", "dup", "d")],
    "outage": [("outage_s", "outage s", ".0f"), ("expected", "expected", "d"),
               ("delivered", "delivered", "d"), ("lost", "lost", "d"), ("duplicated", "dup", "d"),
               ("return_to_last_s", "return->last s", ".2f")],
}  # fmt: skip
# (figure, better when lower?) for the herald / best peer line
RATIOS = {"e2e": [("p50_ms", True), ("p99_ms", True)], "drain": [("mails_per_s", False)],
          "kill": [("kill_to_last_s", True)], "outage": [("return_to_last_s", True)]}  # fmt: skip


def table(kind: str, runs: list[dict[str, Any]]) -> None:
    cols = COLUMNS[kind]
    print("| system | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r in runs:
        cells = [format(r[k], f) if isinstance(r.get(k), int | float) else str(r.get(k)) for k, _, f in cols]
        print(f"| {r['system']} | " + " | ".join(cells) + " |")
    by: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if r.get("lost"):  # a system that lost mail after the kill is no "best" time to the last mail
            continue
        for key, _ in RATIOS[kind]:
            by.setdefault(r["system"], {}).setdefault(key, []).append(float(r[key]))
    if "herald" not in by or len(by) < 2:
        return
    parts = []
    for key, lower in RATIOS[kind]:
        med = {s: statistics.median(v[key]) for s, v in by.items()}
        peers = {s: m for s, m in med.items() if s != "herald"}
        best = (min if lower else max)(peers, key=lambda s: peers[s])
        ratio = med["herald"] / peers[best] if peers[best] else float("nan")
        parts.append(f"{key}: herald {med['herald']:.2f} / best peer {best} {peers[best]:.2f} = {ratio:.2f}")
    scope = " among the peers that lost nothing" if kind in ("kill", "outage") else ""
    print(f"\nherald / best peer{scope} (medians over rounds): " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short durations and small counts (~6 min)")
    parser.add_argument("--only", default="", help=f"comma-separated workloads: {', '.join(WORKLOADS)}")
    parser.add_argument("--systems", default="", help="comma-separated: herald, " + ", ".join(PEERS))
    parser.add_argument("--rounds", type=int, default=1, help="runs per system and workload (interleaved)")
    parser.add_argument("--database", default=None,
                        help="PostgreSQL server URL for herald's tracker DB (default SQLite); the bench "
                             "creates and drops its own databases there")  # fmt: skip
    parser.add_argument("--herald-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra herald config key (TOML value), e.g. worker_concurrency=32")  # fmt: skip
    parser.add_argument("--herald-python", default=sys.executable,
                        help="the Python that runs `-m herald` (default: this one)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="the order of the systems")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (logs, configs)")
    parser.add_argument("--json", default=None, help="also write every run's figures to this file")
    args = parser.parse_args()
    workloads = args.only.split(",") if args.only else list(WORKLOADS)
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r}: {', '.join(WORKLOADS)}")
    rng = random.Random(args.seed)
    bench = Bench(args)
    bench.results = {}
    started = time.time()
    try:
        systems = bench.systems() if set(workloads) - {"request"} else []
        header(bench, systems, workloads)
        p = bench.profile
        plans: dict[str, tuple[str, Callable[[], Any], Callable[..., dict[str, Any]], str]] = {
            "e2e-50": ("e2e", RecordingRelay, bench.e2e(50), "recording (aiosmtpd)"),
            "e2e-200": ("e2e", RecordingRelay, bench.e2e(200), "recording (aiosmtpd)"),
            "drain-fast": ("drain", lambda: SinkRelay(_free_port()), bench.drain(False), "postfix smtp-sink"),
            "drain-slow": ("drain", lambda: RecordingRelay(0.05), bench.drain(True), "aiosmtpd, DATA +50 ms"),
            "kill": ("kill", RecordingRelay, bench.kill(), "recording (aiosmtpd)"),
            "outage": (
                "outage",
                RecordingRelay,
                bench.outage(),
                "recording (aiosmtpd), stopped then restarted",
            ),
        }
        warm = f" (after {p['warmup']:g} s of warm-up at the same rate)"
        describe = {
            "e2e-50": f"enqueue -> SMTP accepted at 50 changes/s for {p['paced']:g} s{warm}",
            "e2e-200": f"enqueue -> SMTP accepted at 200 changes/s for {p['paced']:g} s{warm}",
            "drain-fast": f"drain of {int(p['drain'])} changes ({3 * int(p['drain'])} mails) queued first",
            "drain-slow": f"drain of {int(p['drain'])} changes ({3 * int(p['drain'])} mails) queued first",
            "kill": f"SIGKILL one of 2 job-running processes at {KILL_AT:.0%} of a drain of {int(p['kill'])} "
            f"changes; waits up to {p['kill_window']:g} s after the kill",
            "outage": f"the relay down for {p['outage']:g} s while changes go on at 10/s; waits up to "
            f"{p['outage_window']:g} s after it is back",
        }  # fmt: skip
        for workload in workloads:
            if workload == "request":
                bench.request()
                continue
            kind, relay, body, relay_name = plans[workload]
            print(f"\n## {workload}: {describe[workload]}; relay: {relay_name}", flush=True)
            runs = []
            for _ in range(args.rounds):
                order = list(systems)
                rng.shuffle(order)
                for system in order:
                    runs.append(bench.run(system, relay, body, workload))
            print()
            table(kind, runs)
            bench.results[workload] = runs
    finally:
        bench.pg_drop_all()
        if args.keep:
            print(f"kept {bench.tmp}")
        else:
            shutil.rmtree(bench.tmp, ignore_errors=True)
    print(f"\n(total {time.time() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=2, default=str))


def header(bench: Bench, systems: list[System], workloads: list[str]) -> None:
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    print(
        f"# herald vs peers, {'quick' if bench.args.quick else 'full'} profile; "
        f"workloads: {', '.join(workloads)}"
    )
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {redis_version.strip()}")
    print(f"profile: {json.dumps(bench.profile)}, rounds {bench.args.rounds}, seed {bench.args.seed}")
    print("broker/queue: a fresh redis-server per run (requirepass, appendonly yes, loopback)")
    print(f"each change: 3 recipients ({', '.join(HERALD_RECIPIENTS)}), about 6 KB per mail")
    print("relays, each its own process: postfix smtp-sink -c -m 1024 (backlog 1024); aiosmtpd recording;"
          " aiosmtpd with a 50 ms DATA reply (backlog 1024)")  # fmt: skip
    for system in systems:
        print(f"- {system.settings()}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
