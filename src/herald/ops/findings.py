"""The vocabulary of ``herald check``: a status, a finding (what is wrong, and what to do next), a report.

Each finding has a stable ``code``; its troubleshooting section in ``docs/operations.md`` has the anchor
``check-<code>`` (the admin console links to it), so a code, once published, is never renamed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CODES", "DOCS", "CheckReport", "Finding", "Status", "doc_link"]

#: Where the troubleshooting sections live, relative to the repository (and the installed docs).
DOCS = "docs/operations.md"

#: Every finding code, with its one-line meaning (docs/operations.md has a section for each).
CODES: dict[str, str] = {
    "ok": "notifications are flowing",
    "database-unreadable": "the tracker database cannot be read",
    "queue-unreachable": "the queue cannot be reached",
    "heartbeats-unreadable": "the workers' heartbeats cannot be read",
    "no-worker": "no backend worker is alive while async_emails is on",
    "workers-missing": "fewer backend workers alive than configured",
    "recovery-worker-down": "the recovery worker (async_emails = false) is not running",
    "worker-stuck": "a worker stopped beating or holds one job far too long",
    "outbox-relay-down": "no supervisor or herald relay runs the outbox relay",
    "supervisor-restarted": "herald up restarted its supervisor recently",
    "smtp-relay-down": "workers cannot use the SMTP relay (connection, TLS or login errors)",
    "smtp-4xx": "a high share of recent recipients were answered 4xx",
    "dead-letters": "notifications were dead-lettered",
    "backlog-stale": "the oldest undelivered notification is older than stale_after_seconds",
    "never-pushed": "outbox rows were never handed to the queue",
    "mail-late": "mail went out later than stale_after_seconds after its change",
    "redis-unsafe": "the Redis server is set up in a way that can lose or expose jobs",
}


def doc_link(code: str) -> str:
    return f"{DOCS}#check-{code}"


class Status(enum.IntEnum):
    """Nagios plugin exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class Finding:
    """One thing ``herald check`` found: how bad, what (``message``), and the next step to take."""

    status: Status
    code: str
    message: str
    next_step: str

    @property
    def doc(self) -> str:
        return doc_link(self.code)

    def __iter__(self) -> Iterator[Any]:
        """``status, message = finding``: what 0.2's findings were (pairs), for callers written then."""
        return iter((self.status, self.message))

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.name,
            "code": self.code,
            "message": self.message,
            "next_step": self.next_step,
            "doc": self.doc,
        }


@dataclass
class CheckReport:
    """The verdict (the worst status found) with every finding, worst first, and Nagios perfdata."""

    findings: list[Finding] = field(default_factory=list)
    perfdata: dict[str, float | int] = field(default_factory=dict)
    #: Figures for people and the console (workers, relay...), not thresholds: shown in ``--json``.
    facts: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0

    @property
    def status(self) -> Status:
        worst = Status.OK
        for f in self.findings:
            # UNKNOWN (could not look) outranks WARNING but never a CRITICAL that was seen.
            if f.status > worst and not (worst is Status.CRITICAL and f.status is Status.UNKNOWN):
                worst = f.status
        return worst

    def add(self, status: Status, code: str, message: str, next_step: str) -> None:
        assert code in CODES, code
        self.findings.append(Finding(status, code, message, next_step))

    def sorted_findings(self) -> list[Finding]:
        order = {Status.CRITICAL: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.OK: 3}
        return sorted(self.findings, key=lambda f: order[f.status])

    def headline(self) -> str:
        """The verdict in words, without perfdata (the console's title)."""
        findings = [f for f in self.sorted_findings() if f.status is not Status.OK]
        if not findings:
            return "notifications are flowing"
        more = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
        return findings[0].message + more

    def summary(self) -> str:
        """The Nagios first line: ``HERALD <STATUS> - <headline> | <perfdata>``."""
        perf = " ".join(f"{k}={v}" for k, v in self.perfdata.items())
        return f"HERALD {self.status.name} - {self.headline()}" + (f" | {perf}" if perf else "")

    def text_lines(self) -> list[str]:
        """The summary line, then each finding with its next step and its docs section."""
        lines = [self.summary()]
        for f in self.sorted_findings():
            if f.status is Status.OK:
                continue
            lines.append(f"{f.status.name} {f.code}: {f.message}")
            lines.append(f"    next: {f.next_step}")
            lines.append(f"    docs: {f.doc}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.name,
            "code": int(self.status),
            "summary": self.headline(),
            "findings": [f.as_dict() for f in self.sorted_findings()],
            "perfdata": self.perfdata,
            "facts": self.facts,
            "duration_ms": round(self.duration_ms, 1),
        }
