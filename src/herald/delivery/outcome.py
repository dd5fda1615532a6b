"""What one delivery run tells its caller."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from herald.outbox import stats

__all__ = ["DeliveryOutcome", "Verdict", "count_sends"]


class Verdict(enum.StrEnum):
    """What became of one delivery run, and so of the job that asked for it."""

    DONE = "done"  # every recipient sent or failed for good (or nobody to mail): ack
    RETRY = "retry"  # some recipients are due again after ``delay``
    GONE = "gone"  # the changeset no longer exists: ack
    BUSY = "busy"  # another process is delivering it right now: look again after ``delay``
    LOST = "lost"  # our lock was taken over (fenced off) mid-way; the new holder finishes: ack
    TOO_MANY = "too_many"  # more recipients than the caller will deliver itself (inline): nothing done


@dataclass(frozen=True)
class DeliveryOutcome:
    """The result of :meth:`~herald.delivery.Deliverer.deliver`; counts are the ledger's, all runs
    included (``held``: recipients this run held back because the relay was down).

    What this run itself did, for the metrics: ``attempts`` counts its sends by ``(outcome, smtp_class)``
    (see :data:`herald.outbox.stats.ATTEMPTS`), ``latencies`` holds, per recipient it sent, the seconds
    from the change's commit to the relay's acceptance."""

    verdict: Verdict
    changeset_id: int
    artifact_id: int | None = None
    recipients: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    held: int = 0
    delay: float = 0.0
    duration_ms: float = 0.0
    reason: str = ""
    attempts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    latencies: tuple[float, ...] = ()

    @property
    def finished(self) -> bool:
        """Whether the job that asked for this run is done with (ack), rather than due again later."""
        return self.verdict in (Verdict.DONE, Verdict.GONE, Verdict.LOST)


def count_sends(counts: stats.Counts, outcome: DeliveryOutcome) -> None:
    """Add what one run did (its sends by outcome and SMTP class, its latencies) to ``counts``."""
    for (verdict, smtp_class), n in outcome.attempts.items():
        counts.inc(stats.ATTEMPTS, {"outcome": verdict, "smtp_class": smtp_class}, n)
    counts.observe(stats.LATENCY, outcome.latencies)
