"""The public surface of ``herald.worker``: the process side only (the delivery run is ``herald.delivery``,
the front end's dispatcher is ``herald.web``)."""

from __future__ import annotations

from pathlib import Path

import herald.worker

WORKER = Path(herald.worker.__file__).parent


def test_public_names():
    assert sorted(herald.worker.__all__) == [
        "Relay",
        "RelayReport",
        "Supervisor",
        "Worker",
        "connection_share",
        "workers_wanted",
    ]
    for name in herald.worker.__all__:
        assert getattr(herald.worker, name).__doc__, f"{name} needs a docstring"
