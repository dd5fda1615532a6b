"""The public surface of ``herald.worker`` and the parts it may import (DESIGN.md: queue, notify, mail,
tracker, config; not ops, web or cli)."""

from __future__ import annotations

import ast
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


def test_imports_only_the_parts_below_it():
    allowed = (
        "herald.worker",
        "herald.queue",
        "herald.notify",
        "herald.mail",
        "herald.tracker",
        "herald.config",
    )
    for path in WORKER.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("herald"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
