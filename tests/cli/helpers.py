"""Running ``herald`` in tests: through click's own parser (CliRunner) or as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from herald.cli.main import _register, cli

_register()


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment without the developer's HERALD_* settings, with a private data_dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["HERALD_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def invoke(args: list[str], data_dir: Path, **extra: str) -> Result:
    """``herald ARGS`` through click's CliRunner (stdout and stderr kept apart)."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("HERALD_")}
    env.update({"HERALD_DATA_DIR": str(data_dir), **extra})
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def run_herald(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m herald ARGS`` as a real process, to completion."""
    return subprocess.run(
        [sys.executable, "-m", "herald", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
