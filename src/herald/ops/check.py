"""``herald check`` (and ``GET /api/check``): one Nagios-style verdict on whether notifications are flowing.

It reads three things, each in a few index lookups so that it answers in milliseconds on any backlog:

- the outbox and the delivery ledger (:func:`herald.outbox.read_health`): the oldest undelivered
  notification, rows never pushed, dead letters, and the latest sends (share of 4xx answers, late mail);
- the heartbeats (:mod:`herald.ops.workers`): live workers against the number expected, workers that
  stopped beating while holding a job, the workers' relay gates (the SMTP relay's state as they meet it),
  the supervisor that runs the outbox relay;
- the queue (``stats``) and, for Redis, its configuration (:func:`herald.queue.health.redis_health`).

Each finding (:mod:`herald.ops.findings`) says what is wrong and what to do next. Exit codes follow the
Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. An unreachable part is a finding, never
an exception.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from herald.config import Settings
from herald.ops.findings import CheckReport, Finding, Status
from herald.ops.workers import ProcessView, expected_workers, processes, sane_time, workers_wanted
from herald.outbox.backlog import Health, count_text, read_health
from herald.queue import Queue, QueueError, QueueStats
from herald.tracker.db import Database
from herald.tracker.models import utcnow

__all__ = ["CheckReport", "Finding", "Status", "age_text", "run_check"]

#: Heartbeat rows silent for longer than this are history (a decommissioned host), not a finding.
SILENT_HORIZON_SECONDS = 3600.0
#: A supervisor whose loop has not turned for this long is stuck (it turns five times a second).
SUPERVISOR_STUCK_SECONDS = 30.0
#: Share of 4xx answers among the latest recipients: WARNING from the first, CRITICAL from the second.
SHARE_4XX_WARNING = 0.25
SHARE_4XX_CRITICAL = 0.75
#: Fewer answers than this say nothing about the relay (one greylisted recipient is not a trend).
MIN_4XX_SAMPLE = 3
#: This many dead letters in one window is an outbreak, not an accident.
DEAD_OUTBREAK = 10
#: No age beyond this is believed (ten years): a garbage time is ignored, never shown as "57 years".
MAX_SANE_AGE = 10 * 365 * 24 * 3600.0

LiveWorkers = Callable[[], int]


def window_seconds(settings: Settings) -> float:
    """The span of "recent" (latest sends, new dead letters, a recent supervisor restart): twice
    ``stale_after_seconds``, between one and ten minutes."""
    return float(min(600, max(60, 2 * settings.stale_after_seconds)))


def pending_grace_seconds(settings: Settings) -> float:
    """How long a ``pending`` row may wait before it counts as never pushed: half ``stale_after_seconds``,
    between 5 and 30 s (the front end pushes at once, the relay after 2 s)."""
    return float(min(30, max(5, settings.stale_after_seconds / 2)))


def age_text(seconds: float) -> str:
    """``45 s``, ``12 min 5 s``, ``3 h 20 min``, ``2 d 4 h``."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def _sane_age(value: float) -> float:
    return value if math.isfinite(value) and 0 <= value <= MAX_SANE_AGE else 0.0


def _error(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its message (no SQL, no traceback)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if text.startswith("(") and ") " in text:  # SQLAlchemy's "(sqlite3.OperationalError) unable to open"
        text = text.split(") ", 1)[1]
    name = type(exc).__name__
    return f"{name}: {text[:200]}" if text else name


@dataclass
class _Seen:
    """What was read; None where it could not be read."""

    health: Health | None = None
    stats: QueueStats | None = None
    procs: list[ProcessView] | None = None


def run_check(
    settings: Settings,
    db: Database,
    queue: Queue | None,
    live_workers: LiveWorkers | None = None,
    *,
    redis_probe: bool = True,
    now: datetime | None = None,
) -> CheckReport:
    """Look at the outbox, the ledger, the heartbeats and the queue; never raises for an unreachable part.

    ``live_workers`` is accepted for older callers and ignored: the heartbeats are read directly.
    ``redis_probe=False`` skips the Redis configuration read (one more connection).
    """
    started = time.perf_counter()
    now = now or utcnow()
    report = CheckReport()
    seen = _Seen()
    seen.health = _read_health(settings, db, report, now)
    if queue is not None:
        seen.stats = _read_queue(settings, queue, report)
    if seen.health is not None:
        seen.procs = _read_processes(db, report, now)
    if seen.procs is not None:
        _workers(settings, seen, report, now)
        _supervisor(settings, seen, report, now)
        _smtp_relay(seen.procs, report, now)
    if seen.health is not None:
        _ledger(settings, seen.health, report)
        _backlog(settings, seen, report)
    _dead_letters(settings, seen, report)
    if redis_probe and seen.stats is not None and settings.queue_backend == "redis":
        _redis(settings, report)
    _perfdata(seen, report)
    report.duration_ms = (time.perf_counter() - started) * 1000
    return report


# --- reading ------------------------------------------------------------------------------------------


def _read_health(settings: Settings, db: Database, report: CheckReport, now: datetime) -> Health | None:
    try:
        with db.read() as session:
            return read_health(
                session,
                stale_after_seconds=settings.stale_after_seconds,
                window_seconds=window_seconds(settings),
                pending_grace_seconds=pending_grace_seconds(settings),
                now=now,
            )
    except Exception as exc:  # the check reports a broken part, it does not crash on it
        error = _error(exc)
        if "no such table" in error or "does not exist" in error:
            report.add(
                Status.CRITICAL,
                "database-unreadable",
                f"the tracker database has no herald schema ({error})",
                "is database_url the one herald runs with (see the config: line below)? A new database is "
                "set up by `herald db upgrade` (herald up and herald serve do it at start)",
            )
            return None
        report.add(
            Status.CRITICAL,
            "database-unreadable",
            f"the tracker database cannot be read: {error}",
            "run `herald doctor`; check database_url and that the database server runs; herald.log and "
            "worker.log show the same error",
        )
        return None


def _read_queue(settings: Settings, queue: Queue, report: CheckReport) -> QueueStats | None:
    try:
        return queue.stats()
    except QueueError as exc:
        where = "Redis" if settings.queue_backend == "redis" else "the SQL queue"
        report.add(
            Status.CRITICAL,
            "queue-unreachable",
            f"the queue cannot be reached ({where}): {exc}",
            "is the server up and the password right? `herald queue stats`; worker.log shows "
            "`queue unavailable`; nothing is lost meanwhile, rows wait in the outbox",
        )
        return None


def _read_processes(db: Database, report: CheckReport, now: datetime) -> list[ProcessView] | None:
    try:
        return processes(db, now=now)
    except Exception as exc:
        report.add(
            Status.UNKNOWN,
            "heartbeats-unreadable",
            f"the workers' heartbeats cannot be read: {_error(exc)}",
            "run `herald db upgrade` if the schema is old; herald.log",
        )
        return None


# --- rules --------------------------------------------------------------------------------------------


def _workers(settings: Settings, seen: _Seen, report: CheckReport, now: datetime) -> None:
    assert seen.procs is not None
    procs = seen.procs
    workers = [p for p in procs if p.kind == "worker"]
    live = [p for p in workers if p.alive]
    expected = expected_workers(settings, procs)
    report.perfdata["workers_alive"] = len(live)
    report.perfdata["workers_expected"] = expected
    report.facts["workers"] = [_worker_fact(p, now) for p in workers if _recent(p, now)]
    unfinished = seen.health.unfinished if seen.health is not None else 0
    start = (
        "start them (`herald up`, `herald workers`, or `systemctl start herald-workers.target`); the first "
        "lines of worker.log say why they stopped"
    )
    if settings.async_emails.enabled:
        report.facts["worker_role"] = "backend"
        if settings.nb_backend_workers == 0:
            report.add(
                Status.CRITICAL,
                "no-worker",
                f"async_emails = {settings.async_emails} but nb_backend_workers = 0: those projects' "
                "notifications are not delivered",
                "set nb_backend_workers to 1 or more and restart herald",
            )
        elif not live:
            report.add(
                Status.CRITICAL,
                "no-worker",
                f"no backend worker is alive (0 of {expected}); {count_text(unfinished)} notification(s) "
                "undelivered",
                start,
            )
        elif len(live) < expected:
            report.add(
                Status.WARNING,
                "workers-missing",
                f"{len(live)} of {expected} backend workers alive",
                "worker.log: `worker-N (pid …) exited with …; restarting` says which and why; " + start,
            )
    else:
        report.facts["worker_role"] = "recovery"
        if expected and not live:
            waiting = seen.health is not None and seen.health.stale > 0
            report.add(
                Status.CRITICAL if waiting else Status.WARNING,
                "recovery-worker-down",
                "the recovery worker is not running (async_emails = false, 0 of 1 alive): inline "
                "notifications that met a 4xx or whose request died are not finished",
                start,
            )
    horizon = settings.stale_after_seconds
    for p in workers:
        jobs = p.jobs
        if not p.alive and jobs and p.silent_for(now) <= SILENT_HORIZON_SECONDS:
            job = jobs[0]
            report.add(
                Status.WARNING,
                "worker-stuck",
                f"{p.name} (pid {p.pid}) stopped beating {age_text(p.silent_for(now))} ago while holding "
                f"changeset {job.changeset_id} (for {age_text(now.timestamp() - job.since)}): frozen, hung "
                f"or killed; once its lease ({settings.lease_seconds:g} s) runs out another worker takes "
                "the job over",
                f"on {p.host}: `ps -o stat= -p {p.pid}` (T: stopped, `kill -CONT {p.pid}`); `kill -USR1 "
                f"{p.pid}` prints its threads' stacks; `kill -9 {p.pid}` and the supervisor restarts it",
            )
        elif p.alive and jobs and now.timestamp() - jobs[0].since > max(horizon, settings.lease_seconds):
            job = jobs[0]
            report.add(
                Status.WARNING,
                "worker-stuck",
                f"{p.name} (pid {p.pid}) has held changeset {job.changeset_id} for "
                f"{age_text(now.timestamp() - job.since)}",
                f"a huge change or a very slow relay: `grep changeset_id={job.changeset_id} worker.log`; "
                f"`kill -USR1 {p.pid}` prints its threads' stacks",
            )


def _recent(p: ProcessView, now: datetime) -> bool:
    return p.alive or p.silent_for(now) <= SILENT_HORIZON_SECONDS


def _worker_fact(p: ProcessView, now: datetime) -> dict[str, object]:
    jobs = p.jobs
    return {
        "name": p.name,
        "host": p.host,
        "pid": p.pid,
        "alive": p.alive,
        "silent_s": round(p.silent_for(now), 1),
        "state": p.info.get("state") if p.alive else "silent",
        "busy": len(jobs),
        "slots": p.info.get("slots"),
        "oldest_job_s": round(now.timestamp() - jobs[0].since, 1) if jobs else None,
        "relay_up": not p.relay_down,
    }


def _supervisor(settings: Settings, seen: _Seen, report: CheckReport, now: datetime) -> None:
    assert seen.procs is not None
    supervisors = [p for p in seen.procs if p.kind == "supervisor"]
    live = [p for p in supervisors if p.alive]
    window = window_seconds(settings)
    for p in live:
        restarts = p.info.get("up_restarts")
        age = (now - p.started_at).total_seconds()
        if isinstance(restarts, int) and restarts > 0 and age <= window:
            report.add(
                Status.WARNING,
                "supervisor-restarted",
                f"herald up restarted its supervisor on {p.host} {age_text(age)} ago "
                f"({restarts} restart(s) since herald up started)",
                "herald.log: `supervisor (pid …) exited with …; restarting it`; the lines of worker.log "
                "just before say why it died",
            )
    turning = [p for p in live if _loop_age(p, now) <= SUPERVISOR_STUCK_SECONDS]
    if workers_wanted(settings) == 0 or turning:
        return
    silent = [p for p in supervisors if p.silent_for(now) <= SILENT_HORIZON_SECONDS]
    if live:
        gone = (
            f"the supervisor on {live[0].host} (pid {live[0].pid}) beats but its loop has not turned for "
            f"{age_text(_loop_age(live[0], now))} (stuck: `kill -USR1 {live[0].pid}` shows where)"
        )
    elif silent:
        gone = f"the supervisor on {silent[0].host} stopped beating {age_text(silent[0].silent_for(now))} ago"
    else:
        gone = "no supervisor (herald up, herald workers) or herald relay is running"
    pushed_late = seen.health is not None and seen.health.never_pushed > 0
    report.add(
        Status.CRITICAL if pushed_late else Status.WARNING,
        "outbox-relay-down",
        f"{gone}: the outbox relay does not run, so rows the front end could not push are never queued",
        "start `herald up`, `herald workers` or `systemctl start herald-relay.service`; worker.log "
        "says why the last one stopped",
    )


def _loop_age(p: ProcessView, now: datetime) -> float:
    """Seconds since the supervisor's main loop last turned (0 when it does not say)."""
    at = sane_time(p.info.get("loop_at"), now.timestamp())
    return 0.0 if at is None else max(0.0, now.timestamp() - at)


def _smtp_relay(procs: list[ProcessView], report: CheckReport, now: datetime) -> None:
    live = [p for p in procs if p.kind == "worker" and p.alive]
    down = [p for p in live if p.relay_down]
    report.facts["smtp_relay"] = {"workers": len(live), "workers_down": len(down)}
    if not down:
        return
    since = min((sane_time(p.relay.get("since"), now.timestamp()) or now.timestamp()) for p in down)
    error = next((str(p.relay.get("last_error")) for p in down if p.relay.get("last_error")), "unknown error")
    report.facts["smtp_relay"].update(down_since=since, last_error=error[:300])
    report.add(
        Status.CRITICAL if len(down) == len(live) else Status.WARNING,
        "smtp-relay-down",
        f"the SMTP relay is unusable for {len(down)} of {len(live)} worker(s), for "
        f"{age_text(now.timestamp() - since)}: {error[:300]}",
        "`herald doctor` probes it; worker.log: `relay unusable (…)`; fix the relay or smtp_host / "
        "smtp_port / smtp_security / credentials: sending resumes within 4 s of it working, no recipient "
        "is charged meanwhile",
    )


def _ledger(settings: Settings, health: Health, report: CheckReport) -> None:
    recent = health.recent
    window = age_text(recent.window)
    answered = recent.sent + recent.transient + recent.permanent
    share = recent.transient_share
    report.perfdata["smtp_4xx_share"] = round(share, 2)
    report.perfdata["late_mail"] = recent.late
    if recent.transient >= MIN_4XX_SAMPLE and share >= SHARE_4XX_WARNING:
        report.add(
            Status.CRITICAL if share >= SHARE_4XX_CRITICAL else Status.WARNING,
            "smtp-4xx",
            f"{recent.transient} of the last {answered} recipient(s) answered in the last {window} were "
            f"deferred with a 4xx ({share:.0%}), e.g. {(recent.transient_reply or '')[:200]!r}",
            "the relay defers mail (greylisting, rate limit, full disk, policy): read its logs; worker.log: "
            "`delivery failed … will retry`; herald retries each recipient with backoff up to "
            "delivery_max_age",
        )
    if recent.late:
        report.add(
            Status.WARNING,
            "mail-late",
            f"{recent.late} of the last {recent.sent} mail(s) sent in the last {window} went out more than "
            f"{settings.stale_after_seconds} s after their change "
            f"(worst: changeset {recent.worst_changeset}, {age_text(recent.worst_latency)})",
            "something held them: see the other findings (workers, queue, relay); if there are none, the "
            "workers cannot keep up: raise nb_backend_workers (docs/operations.md#sizing)",
        )


_NEXT_BY_STATE = {
    "pending": "never handed to the queue: is the outbox relay (the supervisor) running and the queue "
    "reachable? worker.log: `relay paused`",
    "queued": "in the queue, waiting for a worker: are workers alive? `herald queue stats`",
    "running": "held by a worker or an inline request: `GET /api/changesets/{cs}/notification`, "
    "`grep changeset_id={cs} worker.log`",
    "retrying": "some recipients were deferred: `GET /api/changesets/{cs}/notification` shows each SMTP "
    "reply",
}


def _backlog(settings: Settings, seen: _Seen, report: CheckReport) -> None:
    health = seen.health
    assert health is not None
    limit = settings.stale_after_seconds
    oldest = health.oldest
    if health.stale and oldest is not None:
        age = _sane_age(oldest.age)
        report.add(
            Status.CRITICAL if age > 10 * limit else Status.WARNING,
            "backlog-stale",
            f"{count_text(health.stale)} notification(s) undelivered for more than {limit} s; the oldest, "
            f"changeset {oldest.changeset_id}, is {oldest.state} for {age_text(age)}",
            _NEXT_BY_STATE.get(oldest.state, "`herald queue stats`").format(cs=oldest.changeset_id),
        )
    if health.never_pushed:
        report.add(
            Status.WARNING,
            "never-pushed",
            f"{count_text(health.never_pushed)} notification(s) committed but not handed to the queue for "
            f"over {pending_grace_seconds(settings):g} s (oldest {age_text(health.oldest_pending_age)})",
            "the outbox relay pushes them every second: is the supervisor (or herald relay) running, and "
            "the queue reachable? worker.log: `relay pushed` / `relay paused`",
        )


def _dead_letters(settings: Settings, seen: _Seen, report: CheckReport) -> None:
    rows = seen.health.dead if seen.health is not None else 0
    letters = seen.stats.dead if seen.stats is not None else 0
    count = max(rows, letters)
    if not count:
        return
    new = seen.health.new_dead if seen.health is not None else 0
    growth = f", {new} in the last {age_text(window_seconds(settings))}" if new else ""
    report.add(
        Status.CRITICAL if new >= DEAD_OUTBREAK else Status.WARNING,
        "dead-letters",
        f"{count} dead letter(s){growth}: their notifications are not delivered unless retried",
        "`herald queue dead` gives each reason; fix the cause, then `herald queue retry --all` "
        "(or `herald queue purge`)",
    )


def _redis(settings: Settings, report: CheckReport) -> None:
    from herald.queue.health import redis_health
    from herald.queue.redis_client import connect

    try:
        client = connect(settings)
    except Exception:
        return
    try:
        warnings = redis_health(client)
    except Exception:  # unreachable now: the queue finding (if any) already says so
        return
    finally:
        client.close()
    loopback = _loopback_redis(settings)
    for warning in warnings:
        if loopback and "without a password" in warning:
            continue  # herald refuses a password-less Redis off loopback; on loopback it is a choice
        report.add(
            Status.WARNING,
            "redis-unsafe",
            warning,
            "fix the Redis configuration (docs/operations.md#redis); `herald doctor` repeats the check",
        )


def _loopback_redis(settings: Settings) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(settings.redis_url).hostname if settings.redis_url else settings.redis_server
    return host in {"127.0.0.1", "::1", "localhost"} or (settings.redis_url or "").startswith("unix:")


def _perfdata(seen: _Seen, report: CheckReport) -> None:
    if seen.health is not None:
        health = seen.health
        report.perfdata.update(
            unfinished=health.unfinished,
            stale=health.stale,
            oldest_age_s=round(_sane_age(health.oldest.age), 1) if health.oldest else 0,
            dead=health.dead,
            never_pushed=health.never_pushed,
        )
    if seen.stats is not None:
        s = seen.stats
        report.perfdata.update(
            queue_depth=s.depth,
            queue_in_flight=s.in_flight,
            queue_delayed=s.delayed,
            queue_dead=s.dead,
            queue_oldest_age_s=round(_sane_age(s.oldest_age_seconds), 1),
        )
