"""An artifact's field values as they stood right after a given changeset.

A job may run long after its changeset (a queue backlog, a retry after an SMTP outage) while the artifact kept
changing; the mail must still describe the artifact as that change left it. Changesets never change once
written, so replaying them up to the one being notified gives the same answer whenever the job runs, with no
race against an update committing meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["replay"]


def replay(changes: Iterable[tuple[int, Any]]) -> dict[int, Any]:
    """Apply ``(field_id, new_value)`` pairs, oldest first, to an empty artifact.

    A ``None`` new value empties the field (it is then absent from the result, as from ``Artifact.values``).
    """
    values: dict[int, Any] = {}
    for field_id, new in changes:
        if new is None:
            values.pop(field_id, None)
        else:
            values[field_id] = new
    return values
