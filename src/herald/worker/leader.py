"""One outbox relay per deployment: a leader elected by a lease in the database.

Every supervisor (``herald workers``, ``herald relay``) of every host competes for the ``relay`` row of
``leader_leases``; the one that holds it runs the relay, the others only look again every second. The row is
the whole protocol, each step one conditional ``UPDATE``:

- **take**: ``holder = me, fence + 1, lease_until = now + lease`` where nobody holds it or its lease ran out;
- **renew**: ``lease_until = now + lease`` where the fence is still mine (every second, by the leader);
- **resign**: ``holder = NULL`` where the fence is still mine (a clean stop: the next supervisor takes over
  on its next look, not after the lease);
- **guard**: the renew, run first in the relay's own write transaction: if another process took the row
  meanwhile (this one was cut off and came back), the relay's transaction writes nothing.

A leader also stops leading once its lease may have run out without a renewal it could confirm (a local
deadline on the monotonic clock, as the delivery engine's lock holders do), so that after a network cut two
relays do not run at once for longer than the clock skew between hosts. Even then they would be harmless:
the relay is idempotent; leadership only keeps N hosts from doing the same work N times.

Expiry is judged on each host's clock (as every lease in herald is): hosts must keep their clocks in step
(NTP), with a skew well below ``lease_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, or_, update
from sqlalchemy.dialects import postgresql, sqlite

from herald.tracker.db import Database
from herald.tracker.models import LeaderLease, utcnow

__all__ = ["RELAY", "Leadership"]

log = logging.getLogger("herald.leader")

#: The role name of the outbox relay in ``leader_leases``.
RELAY = "relay"

T = LeaderLease.__table__
C = T.c

_TAKE = (
    update(T)
    .where(
        C.name == bindparam("b_name"),
        or_(C.holder.is_(None), C.lease_until.is_(None), C.lease_until <= bindparam("now")),
    )
    .values(
        holder=bindparam("b_holder"),
        fence=C.fence + 1,
        lease_until=bindparam("until"),
        acquired_at=bindparam("now"),
    )
    .returning(C.fence)
)
_MINE = (C.name == bindparam("b_name"), C.fence == bindparam("b_fence"), C.holder == bindparam("b_holder"))
_RENEW = update(T).where(*_MINE).values(lease_until=bindparam("until"))
_RESIGN = update(T).where(*_MINE).values(holder=None, lease_until=None)


class Leadership:
    """This process's claim on one role (``name``) of the deployment; see the module docstring.

    ``tick()`` is called every second or so: it takes the role when it is free and renews it while held,
    and says whether this process leads now. ``guard(conn)`` checks the fence inside a write transaction.
    """

    def __init__(
        self,
        db: Database,
        name: str,
        holder: str,
        seconds: float,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.name = name
        self.holder = holder[:200]
        self.seconds = seconds
        self._clock = clock
        self._monotonic = monotonic
        self.fence: int | None = None
        #: Monotonic time past which the lease may have run out (pushed out by confirmed renewals only).
        self._deadline = 0.0
        self._row_ready = False
        self._failing = False

    @property
    def leading(self) -> bool:
        return self.fence is not None and self._monotonic() < self._deadline

    def tick(self) -> bool:
        """Take or renew the role; True while this process leads. Database errors are logged, not raised."""
        since = self._monotonic()
        try:
            with self.db.write() as conn:
                if self.fence is not None and self._renew(conn):
                    self._deadline = since + self.seconds
                elif self.fence is not None:
                    self._lost("taken over by another process")
                if self.fence is None:
                    self._take(conn, since)
        except Exception as exc:
            if not self._failing:
                log.warning("%s leadership: database unreachable (%s)", self.name, exc)
            self._failing = True
            if self.fence is not None and not self.leading:
                self._lost(f"its lease may have run out while the database was unreachable ({exc})")
            return self.leading
        if self._failing:
            log.info("%s leadership: database reachable again", self.name)
            self._failing = False
        return self.leading

    def _take(self, conn: Connection, since: float) -> None:
        now = self._clock()
        if not self._row_ready:
            self._ensure_row(conn)
        params = {"b_name": self.name, "b_holder": self.holder, "now": now, "until": self._until(now)}
        row = conn.execute(_TAKE, params).first()
        if row is None:
            return
        self.fence = int(row.fence)
        self._deadline = since + self.seconds
        log.info("%s leader is now %s (fence %d)", self.name, self.holder, self.fence)

    def _ensure_row(self, conn: Connection) -> None:
        dialect = conn.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        conn.execute(
            insert(T).values(name=self.name, fence=0).on_conflict_do_nothing(index_elements=["name"])
        )
        self._row_ready = True

    def _renew(self, conn: Connection) -> bool:
        assert self.fence is not None
        params = {
            "b_name": self.name,
            "b_fence": self.fence,
            "b_holder": self.holder,
            "until": self._until(self._clock()),
        }
        return bool(conn.execute(_RENEW, params).rowcount == 1)  # type: ignore[attr-defined]

    def _lost(self, why: str) -> None:
        log.warning("%s leadership of %s (fence %s) lost: %s", self.name, self.holder, self.fence, why)
        self.fence = None
        self._deadline = 0.0

    def _until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.seconds)

    def guard(self, conn: Connection) -> bool:
        """In a write transaction for the role: renew and check the fence. False (write nothing) if this
        process does not lead (any more)."""
        if not self.leading:
            return False
        if self._renew(conn):
            return True
        self._lost("taken over by another process")
        return False

    def resign(self) -> None:
        """Give the role up now (a clean stop), so another process takes it at its next look."""
        if self.fence is None:
            return
        fence, self.fence = self.fence, None
        params = {"b_name": self.name, "b_fence": fence, "b_holder": self.holder}
        try:
            with self.db.write() as conn:
                conn.execute(_RESIGN, params)
        except Exception as exc:  # its lease runs out by itself
            log.warning(
                "%s leadership could not be handed over (%s); it lapses with its lease", self.name, exc
            )
            return
        log.info("%s leadership of %s (fence %d) handed over", self.name, self.holder, fence)
