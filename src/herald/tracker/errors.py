"""The tracker's error tree. The web layer maps each type to one HTTP status."""

from __future__ import annotations


class TrackerError(Exception):
    """Base of every error a tracker service raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(TrackerError):
    """The id names nothing (or something the caller may not see: never tell which)."""


class InvalidInput(TrackerError):
    """The input is malformed or breaks a rule; ``field`` names the offending part when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PermissionDenied(TrackerError):
    """The acting user may not do this."""


class Conflict(TrackerError):
    """The change clashes with existing data (a duplicate name, a stale version)."""
