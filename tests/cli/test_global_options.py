"""``--config`` before or after the subcommand, as ``scripts/up --config F`` writes it; config typos."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald.cli.main import RET_CONFIG, RET_USAGE, hoist_global_options
from tests.cli.helpers import invoke


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["up", "--config", "f.toml", "--demo"], ["--config", "f.toml", "up", "--demo"]),
        (["--config", "f.toml", "up"], ["--config", "f.toml", "up"]),
        (["queue", "stats", "--config=f.toml"], ["--config=f.toml", "queue", "stats"]),
        (["load", "--", "--config", "x"], ["load", "--", "--config", "x"]),  # after --: an argument
    ],
)
def test_hoist_moves_only_the_global_options(args, expected):
    assert hoist_global_options(args) == expected


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "herald.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("where", ["before", "after", "after="])
def test_config_is_accepted_before_or_after_the_command(tmp_path, where):
    config = _config(tmp_path, f'data_dir = "{tmp_path / "from-file"}"\n')
    args = {
        "before": ["--config", str(config), "db", "upgrade"],
        "after": ["db", "upgrade", "--config", str(config)],
        "after=": ["db", "upgrade", f"--config={config}"],
    }[where]
    # HERALD_DATA_DIR would win over the file: leave it out so the file is seen to be read.
    result = invoke(args, tmp_path / "unused", HERALD_DATA_DIR=None)  # type: ignore[arg-type]

    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-file" / "herald.db").exists()


def test_config_after_a_nested_command(tmp_path):
    config = _config(tmp_path, 'async_emails = "all"\n')
    result = invoke(["queue", "stats", "--config", str(config), "--json"], tmp_path / "var")
    assert result.exit_code == 0, result.output
    assert f"config: {config} (from --config)" in result.stderr


def test_missing_config_file_after_the_command_is_a_config_error(tmp_path):
    result = invoke(["check", "--config", str(tmp_path / "nope.toml")], tmp_path / "var")

    assert result.exit_code == RET_CONFIG
    assert result.stderr.strip() == (
        f"herald: configuration error: config file {str(tmp_path / 'nope.toml')!r} does not exist"
    )


def test_config_without_a_value_is_a_usage_error(tmp_path):
    result = invoke(["check", "--config"], tmp_path / "var")
    assert result.exit_code == RET_USAGE
    assert "'--config' requires an argument" in result.stderr


def test_a_typo_in_the_file_suggests_the_key(tmp_path):
    config = _config(tmp_path, 'async_email = "all"\n')
    result = invoke(["doctor", "--config", str(config)], tmp_path / "var")

    assert result.exit_code == RET_CONFIG
    assert result.stderr.strip() == (
        f"herald: configuration error: unknown key 'async_email' in {str(config)!r} — "
        "did you mean 'async_emails'?"
    )


def test_a_typo_in_the_environment_suggests_the_variable(tmp_path):
    result = invoke(["check"], tmp_path / "var", HERALD_NB_BACKEND_WORKER="4")

    assert result.exit_code == RET_CONFIG
    assert result.stderr.strip() == (
        "herald: configuration error: unknown environment variable HERALD_NB_BACKEND_WORKER — "
        "did you mean HERALD_NB_BACKEND_WORKERS?"
    )


def test_an_unrelated_key_gets_a_pointer_not_the_list_of_keys(tmp_path):
    config = _config(tmp_path, "colour = 1\n")
    result = invoke(["check", "--config", str(config)], tmp_path / "var")

    assert result.exit_code == RET_CONFIG
    message = result.stderr.strip()
    hint = "(docs/configuration.md lists every key)"
    assert message.endswith(f"unknown key 'colour' in {str(config)!r} {hint}")
    assert "database_url" not in message
