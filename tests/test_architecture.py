"""The dependency direction of DESIGN.md, checked on the source: nothing imports a part above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "herald"

# part -> the herald parts it may import (besides itself), as in DESIGN.md's table.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "tracker": {"config"},
    "notify": {"tracker", "config"},
    "mail": {"config"},
    "queue": {"config"},
    "outbox": {"tracker", "config"},
    "delivery": {"outbox", "notify", "mail", "tracker", "config"},
    "worker": {"delivery", "outbox", "queue", "mail", "tracker", "config"},
    "ops": {"outbox", "queue", "tracker", "config"},
    "web": {"delivery", "outbox", "ops", "queue", "notify", "mail", "tracker", "config"},
    "cli": {"web", "worker", "delivery", "outbox", "ops", "queue", "notify", "mail", "tracker", "config"},
}


def _part_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _herald_imports(path: Path) -> set[str]:
    parts: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("herald."):
                parts.add(name.split(".")[1])
    return parts


SOURCES = sorted(p for p in SRC.rglob("*.py") if _part_of(p) in ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_dependency_direction(path: Path):
    part = _part_of(path)
    wrong = _herald_imports(path) - ALLOWED[part] - {part}
    assert not wrong, f"herald.{part} ({path.name}) imports {sorted(wrong)}, against DESIGN.md's direction"


def test_every_part_is_known():
    parts = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts <= set(ALLOWED), parts - set(ALLOWED)


def test_the_web_app_loads_no_worker_code():
    """The front end never imports the worker process code (not even lazily, through the app factory)."""
    import subprocess
    import sys

    code = (
        "import sys, herald.web.app, herald.web.dispatcher; "
        "print(sorted(m for m in sys.modules if m.startswith('herald.worker')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
