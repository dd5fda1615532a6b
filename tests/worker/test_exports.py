"""The public surface of ``herald.worker`` and the parts it may import (DESIGN.md: queue, notify, mail,
tracker, config; not ops, web or cli)."""

from __future__ import annotations

from pathlib import Path

import herald.worker

WORKER = Path(herald.worker.__file__).parent


def test_public_names():
    assert sorted(herald.worker.__all__) == [
        "Deliverer",
        "DeliveryOutcome",
        "FrontEndDispatcher",
        "Relay",
        "RelayReport",
        "RetryPolicy",
        "Supervisor",
        "Verdict",
        "Worker",
        "alive",
        "backoff",
        "build_dispatcher",
        "workers_wanted",
    ]
    for name in herald.worker.__all__:
        assert getattr(herald.worker, name).__doc__, f"{name} needs a docstring"
