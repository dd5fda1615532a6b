"""``herald doctor``: is this installation set up sanely? Configuration, database, queue, Redis hardening,
mail server, writable directories. Read-only; every finding is one line with what to do about it."""

from __future__ import annotations

import os
import smtplib
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path

from herald.config import Settings, secret_problems
from herald.queue import QueueError, make_queue
from herald.tracker.db import Database
from herald.tracker.schema import current_revision, head_revision


@dataclass
class DoctorReport:
    ok: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.warnings else 0


def diagnose(settings: Settings) -> DoctorReport:
    report = DoctorReport()
    _secrets(settings, report)
    _directories(settings, report)
    _file_modes(settings, report)
    _database(settings, report)
    _queue(settings, report)
    _smtp(settings, report)
    _workers(settings, report)
    return report


def _directories(settings: Settings, report: DoctorReport) -> None:
    for name, path in (("data_dir", settings.data_dir), ("log_dir", settings.log_dir)):
        if name == "log_dir" and settings.log_to_stderr:
            report.ok.append('log_dir = "-": logs go to stderr')
            continue
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if os.access(probe, os.W_OK):
            report.ok.append(f"{name} {path} is writable")
        else:
            report.errors.append(f"{name} {path} is not writable by this user")


def _secrets(settings: Settings, report: DoctorReport) -> None:
    # Settings that did not go through ensure_secrets (which refuses them) may still carry weak secrets:
    # a short admin token can be guessed, a short secret key lets anyone forge unsubscribe links.
    problems = secret_problems(settings)
    report.errors.extend(problems)
    if not problems:
        report.ok.append("admin_token and secret_key are long enough (or generated)")


# What in data_dir holds private data: the database, the logs, the Maildir, the generated secrets.
_PRIVATE_FILES = ("herald.db", "admin_token", "secret_key")


def _file_modes(settings: Settings, report: DoctorReport) -> None:
    """Warn about anything in data_dir or log_dir that others than its owner may read."""
    exposed: list[str] = []
    for root in {Path(settings.data_dir), Path(settings.log_dir)}:
        if str(root) == "-" or not root.is_dir():
            continue
        paths = [root]
        paths += [root / name for name in _PRIVATE_FILES]
        paths += list(root.glob("*.log*"))
        if Path(settings.mailbox_dir).is_dir() and Path(settings.mailbox_dir).is_relative_to(root):
            paths.append(Path(settings.mailbox_dir))
        for path in paths:
            try:
                mode = stat.S_IMODE(path.lstat().st_mode)
            except FileNotFoundError:
                continue
            if mode & 0o077:
                exposed.append(f"{path} ({mode:o})")
    if exposed:
        report.warnings.append(
            "readable by other users (private comments, unsubscribe tokens): "
            + ", ".join(sorted(set(exposed))[:10])
            + ": chmod 0700 the directories and 0600 the files"
        )
    else:
        report.ok.append("data_dir and log_dir are private to this user")


def _database(settings: Settings, report: DoctorReport) -> None:
    db = Database(settings.database_url)
    try:
        current, head = current_revision(db.engine), head_revision(db.engine)
    except Exception as exc:  # doctor reports, it does not crash
        report.errors.append(
            f"database unreachable: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
        )
        return
    finally:
        db.dispose()
    if current != head:
        report.warnings.append(
            f"database schema at {current or 'nothing'}, newest is {head}: run herald db upgrade"
        )
    else:
        report.ok.append(f"database reachable, schema at {head}")


def _queue(settings: Settings, report: DoctorReport) -> None:
    queue = make_queue(settings)
    try:
        queue.ping()
        report.ok.append(f"queue ({settings.queue_backend}) answers")
        if settings.queue_backend == "redis":
            from herald.queue.health import redis_health
            from herald.queue.redis_client import connect

            client = connect(settings)
            try:
                warnings = redis_health(client)
            finally:
                client.close()
            report.warnings.extend(warnings)
            if not warnings:
                report.ok.append("Redis: strong password, appendonly yes, maxmemory-policy noeviction")
    except QueueError as exc:
        report.errors.append(f"queue ({settings.queue_backend}) unreachable: {exc}")
    finally:
        queue.close()


def _smtp(settings: Settings, report: DoctorReport) -> None:
    if not settings.smtp_host:
        report.ok.append(f"no smtp_host: mail goes to the built-in mailbox {settings.mailbox_dir}")
        return
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    timeout = min(settings.smtp_timeout, 10.0)
    try:
        cls = smtplib.SMTP_SSL if settings.smtp_security == "tls" else smtplib.SMTP
        kwargs = {"context": ssl.create_default_context()} if settings.smtp_security == "tls" else {}
        with cls(settings.smtp_host, settings.smtp_port, timeout=timeout, **kwargs) as conn:
            conn.ehlo()
            if settings.smtp_security == "starttls":
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
            if settings.smtp_user:
                conn.login(settings.smtp_user, settings.smtp_password or "")
            conn.noop()
    except smtplib.SMTPAuthenticationError as exc:
        report.errors.append(f"SMTP {where} refused the login of {settings.smtp_user!r} ({exc.smtp_code})")
    except (OSError, smtplib.SMTPException) as exc:  # timeouts and TLS errors are OSErrors
        report.errors.append(f"SMTP {where} unusable: {exc.__class__.__name__}: {str(exc)[:200]}")
    else:
        report.ok.append(f"SMTP {where} accepts connections ({settings.smtp_security})")


def _workers(settings: Settings, report: DoctorReport) -> None:
    if settings.async_emails.enabled and settings.nb_backend_workers == 0:
        report.errors.append(
            f"async_emails = {settings.async_emails} but nb_backend_workers = 0: "
            "nothing will deliver those projects"
        )
    elif settings.async_emails.enabled:
        report.ok.append(
            f"async_emails = {settings.async_emails} with {settings.nb_backend_workers} worker(s)"
        )
    else:
        report.ok.append("async_emails = false: every project notifies inline (see herald.log for timings)")
