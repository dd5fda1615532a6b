"""One outbox relay per deployment: two ``herald relay`` processes ("hosts") on one PostgreSQL and Redis.

The front end here cannot reach Redis, so every change waits in the outbox for the relay: which process
pushed what shows in their logs. Only the leader pushes; SIGKILL it and the other takes over within the
lease; stop that one cleanly (SIGTERM) and a third takes over at once, without waiting for the lease.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from herald.ops.workers import by_host, relay_leader
from tests.e2e.conftest import DEADLINE, Stack
from tests.support.services import free_port
from tests.support.waiting import wait_until as _wait_until

LEASE = 4.0
wait_until = functools.partial(_wait_until, timeout=DEADLINE)
PUSHED = "relay pushed changeset_id="


def _start_relay(stack: Stack, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(stack.env)
    log_dir = stack.tmp_path / f"log-{name}"
    env.update(HERALD_NODE_NAME=name, HERALD_LOG_DIR=str(log_dir), HERALD_REDIS_URL=stack.redis.url)
    out = (stack.tmp_path / f"relay-{name}.out").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "herald", "relay"], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    out.close()
    stack.supervisors.append(process)
    return process, log_dir / "worker.log"


def _pushes(log: Path) -> int:
    return log.read_text().count(PUSHED) if log.exists() else 0


def _leader(stack: Stack) -> str | None:
    leader = relay_leader(stack.db)
    if leader is None or not leader.live or leader.holder is None:
        return None
    return leader.holder.split(":", 1)[0]


def test_one_relay_leads_and_another_takes_over(pg_url: str, make_stack: Callable[..., Stack]) -> None:
    unreachable = f"redis://:nopassword-at-all-here-000000@127.0.0.1:{free_port()}/0"
    stack = make_stack(pg_url, HERALD_LEASE_SECONDS=str(LEASE), HERALD_REDIS_URL=unreachable)
    relays = {name: _start_relay(stack, name) for name in ("relay-a", "relay-b")}
    first = wait_until(lambda: _leader(stack), "a relay leader")
    stack.burst(creations=3, updates=5)
    wait_until(lambda: sum(_pushes(log) for _, log in relays.values()) >= 8, "8 changes relayed")
    counts = {name: _pushes(log) for name, (_, log) in relays.items()}
    # The follower pushed nothing (the leader may push a row again after requeue_after, 10 s).
    assert counts[first] >= 8 and sum(counts.values()) == counts[first], counts

    # The leader vanishes (SIGKILL: no handover): the other takes over once the lease ran out.
    process, _ = relays.pop(first)
    killed_at = time.monotonic()
    process.send_signal(signal.SIGKILL)
    process.wait()
    second = wait_until(lambda: (n := _leader(stack)) not in (None, first) and n, "the follower to lead")
    takeover = time.monotonic() - killed_at
    stack.burst(creations=1, updates=3)
    wait_until(lambda: _pushes(relays[second][1]) >= 4, "the new leader relays")

    # A clean stop hands over at once: a third relay takes over well within the lease.
    relays["relay-c"] = _start_relay(stack, "relay-c")
    wait_until(lambda: any(h.host == "relay-c" and h.live for h in by_host(stack.db)), "relay-c running")
    stopped_at = time.monotonic()
    relays[second][0].send_signal(signal.SIGTERM)
    wait_until(lambda: _leader(stack) == "relay-c", "relay-c to lead")
    handover = time.monotonic() - stopped_at
    assert relays[second][0].wait(timeout=30) == 0
    print(f"relay leader: kill -> takeover {takeover:.1f}s (lease {LEASE}s); clean stop -> {handover:.1f}s")
    assert takeover >= LEASE - 1.0  # a vanished leader is waited for (its lease could still be good)...
    assert handover < LEASE  # ...a stopped one is not
