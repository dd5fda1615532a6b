"""Whether a project's notifications run inline (inside the request) or through the backend workers."""

from __future__ import annotations

from herald.config import DispatchMode, Settings

__all__ = ["DispatchPolicy"]


class DispatchPolicy:
    """Reads ``async_emails`` from the settings; ``policy.mode_for`` (or the policy itself) is the
    ``mode_for`` callable the tracker services take."""

    def __init__(self, settings: Settings) -> None:
        self._async = settings.async_emails

    def mode_for(self, project_id: int) -> DispatchMode:
        """``async`` if the project is listed in ``async_emails`` (or it is ``all``), else ``inline``."""
        return DispatchMode.ASYNC if self._async.applies_to(project_id) else DispatchMode.INLINE

    __call__ = mode_for

    def __repr__(self) -> str:
        return f"DispatchPolicy(async_emails={str(self._async)!r})"
