"""``herald test-send ADDRESS``: one mail through every hop (placeholder until implemented)."""

from __future__ import annotations

COMMANDS: list[object] = []
