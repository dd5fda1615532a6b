"""The reconciliation: every (changeset, recipient) the tracker says is owed, against the ledger (through the
notification API) and against what the relay received."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx2 as httpx

from tests.chaos.load import Load
from tests.chaos.stack import ChaosStack


class SettleWatch:
    """Notes the moment every notification is settled once the load has ended, while faults may still be
    landing: the drain time is measured from the last change to that moment."""

    def __init__(self, stack: ChaosStack, load: Load) -> None:
        self.stack, self.load = stack, load
        self.settled_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-settle-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if self.load.done and self.stack.settled():
                self.settled_at = time.monotonic()
                return

    def stop(self) -> float:
        """Stop watching; the drain time (seconds from the last change to every notification settled)."""
        self._stop.set()
        self._thread.join(timeout=30)
        settled = self.settled_at if self.settled_at is not None else time.monotonic()
        return max(0.0, settled - self.load.finished)


@dataclass
class Outcome:
    changesets: int
    creations: int
    expected: int  # (changeset, recipient) pairs owed, the refused ones included
    delivered: int
    lost: int
    duplicated: int
    failed_as_expected: int  # refused with a 550 and recorded failed with that reply
    unexpected: list[str]  # mail for a pair nobody owed
    ledger_mismatches: list[str]  # the ledger disagrees with the tracker, or a refusal not recorded
    lost_pairs: list[tuple[int, str]]
    duplicates: dict[tuple[int, str], int]  # pair -> extra copies received


def reconcile(stack: ChaosStack, acknowledged: list[int]) -> Outcome:
    """Every (changeset, recipient) the tracker says is owed, against the ledger (through the notification
    API) and against what the relay received."""
    committed = stack.changesets()
    missing = sorted(set(acknowledged) - {cs for cs, _ in committed})
    assert not missing, f"changes acknowledged to the client but not in the database: {missing[:20]}"
    by_artifact: dict[int, list[int]] = {}
    for cs, artifact in committed:
        by_artifact.setdefault(artifact, []).append(cs)
    owed: dict[tuple[int, str], bool] = {}  # pair -> refused by the relay
    mismatches: list[str] = []
    creations = failed_as_expected = 0
    with httpx.Client(base_url=stack.frontend.url, headers=stack.admin(), timeout=30) as client:
        for artifact, changesets in sorted(by_artifact.items()):
            view = client.get(f"/api/artifacts/{artifact}").raise_for_status().json()
            values = view["values"]
            recipients = {stack.users[values["assigned_to"]], *(stack.users[u] for u in values["cc"])}
            shown = sorted(c["id"] for c in view["changesets"])
            if shown != sorted(changesets):
                mismatches.append(f"artifact {artifact}: API shows changesets {shown}, database {changesets}")
            creations += sum(1 for c in view["changesets"] if c["is_creation"])
            for cs in changesets:
                for address in recipients:
                    owed[(cs, address)] = address.startswith("bounce")
                detail = client.get(f"/api/changesets/{cs}/notification").raise_for_status().json()
                ledger = {d["address"]: d for d in detail["deliveries"]}
                if set(ledger) != recipients:
                    mismatches.append(f"changeset {cs}: ledger {sorted(ledger)} != owed {sorted(recipients)}")
                if detail["state"] != "done":
                    mismatches.append(f"changeset {cs}: state {detail['state']}")
                for address, d in ledger.items():
                    if address.startswith("bounce"):
                        if d["status"] == "failed" and (d["last_reply"] or "").startswith("550"):
                            failed_as_expected += 1
                        else:
                            mismatches.append(f"changeset {cs} {address}: {d['status']} {d['last_reply']!r}")
                    elif d["status"] != "sent":
                        mismatches.append(f"changeset {cs} {address}: {d['status']} {d['last_reply']!r}")
    received = Counter((m.changeset_id, m.rcpt_tos[0]) for m in stack.smtp.messages)
    deliverable = {pair for pair, refused in owed.items() if not refused}
    delivered = sum(1 for pair in deliverable if received[pair])
    lost_pairs = sorted(pair for pair in deliverable if not received[pair])
    return Outcome(
        changesets=len(committed),
        creations=creations,
        expected=len(owed),
        delivered=delivered,
        lost=len(lost_pairs),
        duplicated=sum(n - 1 for n in received.values() if n > 1),
        failed_as_expected=failed_as_expected,
        unexpected=[f"{pair} x{n}" for pair, n in received.items() if pair not in deliverable],
        ledger_mismatches=mismatches,
        lost_pairs=lost_pairs,
        duplicates={pair: n - 1 for pair, n in received.items() if n > 1},
    )
