"""Writers that lock several outbox rows in one transaction lock them in one order (by changeset id).

Found by the chaos suite on PostgreSQL: the outcome recorder (one transaction guarding many deliveries) and
a worker's lease keeper (one transaction renewing every lease it holds) locked the same rows in different
orders and deadlocked. When the recorder was the victim, the outcomes of mails already sent were not
recorded, and those recipients were mailed again although no process had died.
"""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy.exc import OperationalError

from herald.delivery.recorder import Recorder
from herald.outbox import lock
from herald.tracker.models import utcnow
from tests.support.tracker import make_database

pytestmark = pytest.mark.postgres

ROWS = 40
ROUNDS = 30


def _deadlock(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) and "deadlock" in str(exc).lower()


def test_the_recorder_and_the_lease_keeper_never_deadlock(pg_url, make_bed):
    db = make_database(pg_url)
    try:
        bed = make_bed(db)
        changes = [bed.changeset() for _ in range(ROWS)]
        with db.write() as conn:
            leases = [lock.acquire(conn, cs, "worker-1", 60, now=utcnow()).lease for cs in changes]
        assert all(leases)
        recorder = Recorder(db)
        deadlocks: list[str] = []
        start = threading.Barrier(2)

        def keep(seed: int) -> None:  # the lease keeper: renew everything held, in the order it comes
            rng = random.Random(seed)
            start.wait()
            for _ in range(ROUNDS):
                held = rng.sample(leases, len(leases))
                try:
                    with db.write() as conn:
                        assert len(lock.renew_all(conn, held, utcnow())) == ROWS
                except OperationalError as exc:
                    deadlocks.append(f"renew: {exc.__class__.__name__}")
                    if not _deadlock(exc):
                        raise

        keeper = threading.Thread(target=keep, args=(1,))
        keeper.start()
        try:
            rng = random.Random(2)
            start.wait()
            for _ in range(ROUNDS):
                # Deliveries finishing together in any order: the recorder writes them in one transaction.
                futures = [recorder.record(lease, []) for lease in rng.sample(leases, len(leases))]
                for future in futures:
                    exc = future.exception(timeout=30)
                    if exc is not None:
                        deadlocks.append(f"recorder: {exc.__class__.__name__}")
                        if not _deadlock(exc):
                            raise exc
        finally:
            keeper.join(timeout=60)
            recorder.close()
        assert deadlocks == []
    finally:
        db.dispose()
