"""What the admin console shows, gathered from the parts that own it: the check's verdict (``ops.check``),
the workers' heartbeats (``ops.workers``), the queue (the ``Queue`` contract) and the outbox's figures
(``herald.outbox``). The routes in :mod:`herald.web.routes.console` render it; nothing here writes."""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from herald.ops.check import run_check
from herald.ops.workers import alive
from herald.outbox import MinuteFigures, read_backlog, sent_per_minute
from herald.queue import DeadLetter, QueueError
from herald.web.runtime import Runtime

log = logging.getLogger("herald.web")

__all__ = [
    "Finding",
    "MinuteCache",
    "RelayState",
    "Verdict",
    "WorkerView",
    "age",
    "dead_letters",
    "live_figures",
    "relay_state",
    "verdict",
    "when",
    "workers",
]

#: How the console words each check status, for people rather than Nagios.
_PLAIN = {
    "OK": "All is well",
    "WARNING": "Needs attention",
    "CRITICAL": "Notifications are not flowing",
    "UNKNOWN": "The check could not tell",
}
_SLUG = re.compile(r"[^a-z0-9]+")


def when(value: datetime | float | int | str | None) -> str:
    """A time as people read it in the console: date, time and zone (UTC, as herald keeps them).
    Accepts a datetime, a unix time or an ISO 8601 string (as the outbox's detail gives them)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value < 32_503_680_000:
            return "?"
        value = datetime.fromtimestamp(value, UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float | None) -> str:
    """A duration in the largest unit that reads well: ``42 s``, ``7 min``, ``3 h 5 min``, ``2 d 4 h``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


# --- the verdict ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    status: str  # OK, WARNING, CRITICAL, UNKNOWN
    message: str
    next_step: str = ""
    id: str = ""

    @property
    def anchor(self) -> str:
        """The troubleshooting section of docs/operations.md for this finding."""
        return f"check-{self.id}" if self.id else ""


@dataclass(frozen=True)
class Verdict:
    status: str
    headline: str  # plain words, never the Nagios line with perfdata
    findings: list[Finding] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{_PLAIN.get(self.status, self.status)} — herald"


def _status_name(value: Any) -> str:
    name = getattr(value, "name", None)
    return str(name if name is not None else value).upper()


def _finding(raw: Any) -> Finding:
    """One finding, whatever shape the check gives it: a ``(status, message)`` pair, an object with
    ``status``/``message`` (and maybe ``next_step``/``id``), or a dict of those."""
    if isinstance(raw, tuple | list) and len(raw) >= 2:
        return Finding(_status_name(raw[0]), str(raw[1]), str(raw[2]) if len(raw) > 2 and raw[2] else "")
    get = raw.get if isinstance(raw, dict) else lambda k, d=None: getattr(raw, k, d)
    status = _status_name(get("status", "UNKNOWN"))
    message = str(get("message", "") or get("summary", "") or raw)
    next_step = get("next_step", None) or get("next", None) or get("advice", None) or ""
    ident = get("id", None) or get("code", None) or get("key", None) or ""
    return Finding(status, message, str(next_step), _SLUG.sub("-", str(ident).lower()).strip("-"))


def verdict(runtime: Runtime) -> Verdict:
    """``herald check``'s verdict in plain words (never raises: a check that fails says so)."""
    try:
        report = run_check(runtime.settings, runtime.db, runtime.queue, runtime.live_workers)
    except Exception as exc:  # the console must open when the check itself breaks
        log.exception("herald check failed inside the admin console")
        return Verdict("UNKNOWN", f"the check failed: {exc.__class__.__name__}")
    status = _status_name(getattr(report, "status", "UNKNOWN"))
    ordered = getattr(report, "sorted_findings", None)
    findings = [_finding(f) for f in (ordered() if callable(ordered) else getattr(report, "findings", []))]
    words = getattr(report, "headline", None)
    if callable(words):  # the check's own plain-words verdict, when it has one
        headline = str(words())
    else:
        worst = [f for f in findings if f.status == status and f.status != "OK"]
        headline = worst[0].message if worst else "notifications are flowing"
    shown = [f for f in findings if f.status != "OK"]
    return Verdict(status, headline[:1].upper() + headline[1:], shown)


# --- workers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobView:
    job_id: str
    changeset_id: int | None
    since: str


@dataclass(frozen=True)
class WorkerView:
    name: str
    kind: str
    host: str
    pid: int
    started: str
    beat: str
    state: str
    slots: int | None
    busy: int | None
    done: int | None
    failed: int | None
    jobs: list[JobView]
    relay_up: bool | None
    relay_since: str
    relay_error: str


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _jobs(raw: Any) -> list[JobView]:
    if not isinstance(raw, list):
        return []
    out = []
    for one in raw[:100]:
        if isinstance(one, dict):
            since = one.get("since")
            out.append(
                JobView(
                    str(one.get("job_id", "")),
                    _int(one.get("changeset_id")),
                    when(since) if isinstance(since, int | float) else "",
                )
            )
    return out


def _worker(row: Any) -> WorkerView:
    info = row.info if isinstance(row.info, dict) else {}
    relay = info.get("relay") if isinstance(info.get("relay"), dict) else {}
    since = relay.get("since")
    up = relay.get("up")
    return WorkerView(
        name=row.name,
        kind=row.kind,
        host=row.host,
        pid=row.pid,
        started=when(row.started_at),
        beat=when(row.beat_at),
        state=str(info.get("state") or ("running" if row.kind == "supervisor" else "?")),
        slots=_int(info.get("slots")),
        busy=_int(info.get("busy")),
        done=_int(info.get("done")),
        failed=_int(info.get("failed")),
        jobs=_jobs(info.get("jobs")),
        relay_up=up if isinstance(up, bool) else None,
        relay_since=when(since) if isinstance(since, int | float) else "",
        relay_error=str(relay.get("last_error") or ""),
    )


def workers(runtime: Runtime) -> dict[str, list[WorkerView]]:
    """Live workers and supervisors (fresh heartbeats), grouped by host."""
    by_host: dict[str, list[WorkerView]] = {}
    for row in alive(runtime.db):
        view = _worker(row)
        by_host.setdefault(view.host, []).append(view)
    return dict(sorted(by_host.items()))


@dataclass(frozen=True)
class RelayState:
    """The SMTP relay as the workers last saw it."""

    target: str
    state: str  # up, down, unknown, mailbox
    detail: str


def relay_state(runtime: Runtime, hosts: dict[str, list[WorkerView]]) -> RelayState:
    settings = runtime.settings
    if not settings.smtp_host:
        return RelayState("built-in mailbox", "mailbox", "no smtp_host: mail is kept in the mailbox")
    target = f"{settings.smtp_host}:{settings.smtp_port or 25}"
    seen = [w for ws in hosts.values() for w in ws if w.relay_up is not None]
    down = [w for w in seen if not w.relay_up]
    if down:
        w = down[0]
        detail = f"down since {w.relay_since}" if w.relay_since else "down"
        if w.relay_error:
            detail += f": {w.relay_error}"
        return RelayState(target, "down", f"{detail} (seen by {len(down)} of {len(seen)} workers)")
    if seen:
        return RelayState(target, "up", f"answering (seen by {len(seen)} workers)")
    return RelayState(target, "unknown", "no live worker reports on the relay")


# --- dead letters and live figures ----------------------------------------------------------------------


def dead_letters(runtime: Runtime, limit: int = 200) -> tuple[list[DeadLetter], str | None]:
    """The queue's dead letters (oldest death first), or an empty list and why the queue cannot tell."""
    try:
        return runtime.queue.dead_letters(limit=limit), None
    except QueueError as exc:
        return [], f"the queue cannot be reached: {exc}"


class MinuteCache:
    """The hour chart's closed minutes, kept by the web process so a poll reads only the newest ones.

    A minute is final once it is :data:`SETTLED` minutes old (a sent time is recorded within moments of
    the send, by the worker's recorder). Safe to share between request threads.
    """

    SETTLED = 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed: dict[datetime, MinuteFigures] = {}

    def hour(self, session: Any, now: datetime, minutes: int = 60) -> list[MinuteFigures]:
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
        with self._lock:
            known = 0
            while known < minutes and (start + timedelta(minutes=known)) in self._closed:
                known += 1
            cached = [self._closed[start + timedelta(minutes=i)] for i in range(known)]
        fresh = sent_per_minute(session, minutes, now, skip=known)
        settled_before = now.replace(second=0, microsecond=0) - timedelta(minutes=self.SETTLED)
        with self._lock:
            for m in fresh:
                if m.minute < settled_before:
                    self._closed[m.minute] = m
            for old in [k for k in self._closed if k < start]:
                del self._closed[old]
        return cached + fresh


def live_figures(runtime: Runtime, cache: MinuteCache | None = None) -> dict[str, Any]:
    """What the console's chart and counters poll: the queue now, the outbox now, the last hour by minute."""
    out: dict[str, Any] = {"at": when(datetime.now(UTC))}
    try:
        stats = runtime.queue.stats()
        out["queue"] = {
            "depth": stats.depth,
            "in_flight": stats.in_flight,
            "delayed": stats.delayed,
            "dead": stats.dead,
            "oldest_age_seconds": round(stats.oldest_age_seconds, 1),
            "oldest_age": age(stats.oldest_age_seconds),
        }
    except QueueError as exc:
        out["queue"] = {"error": f"the queue cannot be reached: {exc}"}
    with runtime.db.read() as s:
        backlog = read_backlog(s, runtime.settings.stale_after_seconds)
        now = datetime.now(UTC)
        minutes = cache.hour(s, now) if cache is not None else sent_per_minute(s, 60, now)
    out["outbox"] = {
        "states": backlog.states,
        "unfinished": backlog.unfinished,
        "stale": backlog.stale,
        "oldest_unfinished_age_seconds": round(backlog.oldest_unfinished_age, 1),
        "oldest_unfinished_age": age(backlog.oldest_unfinished_age),
        "oldest_unfinished_changeset": backlog.oldest_unfinished_changeset,
        "deliveries": backlog.deliveries,
    }
    out["minutes"] = [
        {
            "t": m.minute.strftime("%H:%M"),
            "sent": m.sent,
            "latency_avg": round(m.latency_avg, 3),
            "latency_max": round(m.latency_max, 3),
        }
        for m in minutes
    ]
    out["sent_last_hour"] = sum(m.sent for m in minutes)
    return out
