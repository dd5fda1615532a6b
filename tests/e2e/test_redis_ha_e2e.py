"""Issue 10: herald on Redis Sentinel and Redis Cluster, with faults injected under a steady load of changes.

The whole system runs (API in-process, ``herald workers`` as processes) on a real deployment started by the
test. A master is SIGKILLed mid-run (Sentinel or Cluster promotes its replica; replication is asynchronous,
so recent pushes, acks and consumer-group changes may be lost), and in Cluster a slot holding a queue shard
is migrated to another master while changes keep coming. Every change must still be mailed to everyone
(lost 0), and nobody more than once except for mails in flight when the fault hit.

Short by default (CI); ``HERALD_HA_LONG=1`` runs several times the load and faults.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from herald.queue.keys import RedisKeys
from tests.e2e.conftest import Stack, wait_until
from tests.support.redis_ha import ClusterSet, SentinelSet

pytestmark = [pytest.mark.redis, pytest.mark.redis_ha, pytest.mark.slow]

LONG = os.environ.get("HERALD_HA_LONG", "") == "1"
#: Changes per load phase (three recipients each).
PHASE = 40 if LONG else 12
ROUNDS = 3 if LONG else 1


def report(line: str) -> None:
    """Fault-run counts, shown with ``pytest -s`` (and in docs/scaling.md)."""
    print(f"\n[ha] {line}")


def in_flight_now(stack: Stack) -> int:
    """Mails accepted and not recorded as sent, or begun and not finished: what may come twice."""
    return stack.in_flight() + stack.smtp.open_transactions


def test_sentinel_failover_under_load_loses_nothing(
    make_stack: Callable[..., Stack], redis_sentinel_set: SentinelSet
) -> None:
    deployment = redis_sentinel_set
    stack = make_stack(**deployment.env())
    stack.start_workers()
    stack.wait_workers(2)
    stack.burst(creations=5, updates=PHASE)
    in_flight = 0
    for round_ in range(ROUNDS):
        wait_until(lambda: len(stack.smtp.messages) >= 6, "delivery to be under way")
        in_flight += in_flight_now(stack)
        old = deployment.kill_master()
        stack.burst(creations=0, updates=PHASE)  # while nobody is master: pushes wait for the relay
        new = deployment.wait_failover(old)
        report(f"round {round_ + 1}: master :{old.port} SIGKILLed, sentinels promoted :{new.port}")
        stack.burst(creations=0, updates=PHASE)
        if round_ + 1 < ROUNDS:  # bring the old master back as a replica for the next round
            deployment.restart(old)
    tally = stack.wait_all_delivered(timeout=90)
    report(
        tally.line(f"Sentinel, {ROUNDS} master kill(s) under load, {len(stack.changesets)} changes")
        + f" in_flight={in_flight} relay_pushes={stack.log().count('relay pushed')}"
    )
    assert tally.lost == 0
    assert tally.duplicated <= in_flight


def test_cluster_failover_and_slot_migration_under_load_lose_nothing(
    make_stack: Callable[..., Stack], redis_cluster_set: ClusterSet
) -> None:
    cluster = redis_cluster_set
    stack = make_stack(**cluster.env())
    keys = RedisKeys(stack.settings.redis_namespace, stack.settings.queue_shards)
    slots = [key_slot(shard.stream.encode()) for shard in keys.by_index]
    owners = [cluster.owner(slot)[1].port for slot in slots]
    report(f"shards {slots} on masters {owners}")
    assert len(set(owners)) == 3  # the queue is spread over every master

    stack.start_workers()
    stack.wait_workers(2)
    stack.burst(creations=5, updates=PHASE)
    wait_until(lambda: len(stack.smtp.messages) >= 6, "delivery to be under way")

    # 1. SIGKILL a master holding a shard (not the node herald was told about: new processes start from it).
    named = int(stack.settings.redis_url.rsplit(":", 1)[1].split("/")[0])  # type: ignore[union-attr]
    victim = next(n for n in cluster.nodes if n.port in owners and n.port != named)
    in_flight = in_flight_now(stack)
    cluster.kill(victim)  # once a replica of it is in sync (one that never synced may not fail over)
    killed = time.monotonic()
    stack.burst(creations=0, updates=PHASE)
    cluster.wait_failover(victim)
    report(f"master :{victim.port} SIGKILLed, its replica promoted in {time.monotonic() - killed:.1f}s")
    stack.burst(creations=0, updates=PHASE)

    # 2. Migrate the slot of a shard to another master while changes keep coming.
    moved: list[int] = []
    for round_ in range(ROUNDS):
        slot = slots[round_ % len(slots)]
        _, source = cluster.owner(slot)
        target = next(
            n for n in cluster.nodes if n.alive and n.port != source.port and cluster.is_master(n.port)
        )
        in_flight += in_flight_now(stack)
        mover = threading.Thread(
            target=lambda s=slot, t=target: moved.append(cluster.migrate_slot(s, t.port))
        )
        mover.start()
        stack.burst(creations=0, updates=PHASE)
        mover.join(timeout=60)
        assert cluster.owner(slot)[1].port == target.port
        report(f"slot {slot} migrated :{source.port} -> :{target.port} with {moved[-1]} key(s) under load")
    stack.burst(creations=0, updates=PHASE)

    tally = stack.wait_all_delivered(timeout=90)
    changes = len(stack.changesets)
    report(
        tally.line(f"Cluster, 1 master kill + {ROUNDS} slot migration(s) under load, {changes} changes")
        + f" in_flight={in_flight} relay_pushes={stack.log().count('relay pushed')}"
    )
    assert tally.lost == 0
    assert tally.duplicated <= in_flight
