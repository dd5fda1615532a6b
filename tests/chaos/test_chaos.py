"""Chaos: a load of changes through the HTTP API while workers, Redis, the relay and the front end are hit at
seeded moments; at the end every (changeset, recipient) owed is reconciled with what the relay received.

The promises under test (DESIGN.md): nothing is lost (1), nobody is mailed twice except the messages in flight
when a process died (2), a permanent refusal is recorded with its reply (6). The short profile runs in CI;
``HERALD_CHAOS=long`` runs a few thousand changes and dozens of faults (``-s`` shows the summary)::

    HERALD_CHAOS=long .venv/bin/pytest tests/chaos -s
"""

from __future__ import annotations

import pytest

from tests.chaos import profile as P
from tests.chaos.faults import Faults
from tests.chaos.load import Load
from tests.chaos.reconcile import Outcome, SettleWatch, reconcile
from tests.chaos.stack import ChaosStack
from tests.support.system import report
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(P.current().timeout)]


@pytest.mark.parametrize(
    ("queue", "database"),
    [
        pytest.param("redis", "sqlite", id="redis-sqlite"),
        pytest.param("sql", "postgresql", id="sql-postgresql"),
    ],
)
def test_chaos_loses_nothing_and_duplicates_only_what_was_in_flight(
    make_chaos_stack, chaos_profile: P.Profile, queue: str, database: str
):
    profile, seed = chaos_profile, P.SEED
    stack: ChaosStack = make_chaos_stack(database=database, queue=queue)
    tag = f"chaos {profile.name} {queue}-{database}"
    report(tag, f"seed={seed} (HERALD_TEST_SEED) changes={profile.changes} rate={profile.rate}/s "
                f"clients={profile.clients} faults planned={profile.fault_counts(queue)}")  # fmt: skip
    stack.smtp.misbehave(seed=seed, delay=profile.smtp_delay, flaky_rate=profile.smtp_flaky_rate)
    stack.start_workers()
    stack.wait_workers(int(stack.env["HERALD_NB_BACKEND_WORKERS"]))

    load = Load(stack, profile, seed)
    faults = Faults(stack, profile, seed)
    load.start()
    watch = SettleWatch(stack, load)
    try:
        faults.run(load)
    except BaseException:
        load.stop()
        raise
    finally:
        load.join(timeout=profile.timeout)
    try:
        wait_until(stack.settled, "every notification to be settled", timeout=profile.drain_timeout)
    except BaseException:
        report(tag, f"not settled: {stack.notification_states()}")
        stack.dump_stacks()
        raise
    finally:
        drain = watch.stop()
    outcome = reconcile(stack, load.acknowledged)
    _summary(tag, stack, load, faults, outcome, drain)

    assert load.refused == [], load.refused[:10]
    assert outcome.lost == 0, outcome.lost_pairs[:20]
    assert outcome.duplicated <= faults.in_flight, stack.duplicates()
    # ... and each duplicate was one of the mails in flight at a fault (those caught mid-transaction aside).
    unexplained = {pair: n for pair, n in outcome.duplicates.items() if pair not in faults.suspects}
    assert sum(unexplained.values()) <= faults.begun, unexplained
    assert outcome.unexpected == [], outcome.unexpected[:20]
    assert outcome.ledger_mismatches == [], outcome.ledger_mismatches[:20]
    assert outcome.failed_as_expected == outcome.expected - outcome.delivered - outcome.lost
    assert sum(faults.injected.values()) == sum(profile.fault_counts(queue).values())


def _summary(tag: str, stack: ChaosStack, load: Load, faults: Faults, outcome: Outcome, drain: float) -> None:
    kinds = " ".join(f"{k}={faults.injected[k]}" for k in P.KINDS if faults.injected[k])
    lines = [
        f"changes committed={outcome.changesets} (creations={outcome.creations}) "
        f"acknowledged={len(load.acknowledged)} interrupted={load.interrupted} (of which committed: "
        f"{outcome.changesets - len(load.acknowledged)}) refused={len(load.refused)} "
        f"in {load.finished - load.started:.1f}s",
        f"expected={outcome.expected} delivered={outcome.delivered} lost={outcome.lost} "
        f"duplicated={outcome.duplicated} (in flight at the faults: {faults.in_flight}; duplicates "
        f"not among them: {sum(n for p, n in outcome.duplicates.items() if p not in faults.suspects)}) "
        f"failed as expected={outcome.failed_as_expected} (550, reply recorded)",
        f"faults injected: {kinds} smtp_flaky_replies={stack.smtp.flaky_count}",
        f"drain time={drain:.1f}s (from the last change to every notification settled; the last fault "
        f"ended {faults.finished - load.finished:+.1f}s after the last change)",
    ]
    unnamed = sorted(pair for pair in outcome.duplicates if pair not in faults.suspects)
    if unnamed:
        lines.append(f"duplicates not named at a fault (changeset, address): {unnamed[:20]}")
    for line in lines:
        report(tag, line)
