"""``herald``: parse, build settings, call the library, exit with a named code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from herald.config import ConfigError, Settings, ensure_secrets, load_settings

RET_OK = 0
RET_ERROR = 1
RET_USAGE = 2  # click's own code for bad arguments
RET_CONFIG = 3


class Context:
    """What every subcommand gets: the config path given (workers are started with the same one)."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = ensure_secrets(load_settings(self.config_path))
            except ConfigError as exc:
                fail(f"configuration error: {exc}", RET_CONFIG)
        return self._settings


def fail(message: str, code: int = RET_ERROR) -> None:
    click.echo(f"herald: {message}", err=True)
    sys.exit(code)


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="HERALD_CONFIG",
    help="TOML configuration file (default: $HERALD_CONFIG, else built-in defaults).",
)
@click.version_option(package_name="herald")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """herald: notification backend for issue trackers."""
    ctx.obj = Context(config_path)


def _register() -> None:
    from herald.cli import data, mailbox, ops, serve, workers

    for module in (serve, data, mailbox, ops, workers):
        for command in module.COMMANDS:
            cli.add_command(command)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def path_arg(value: str) -> Path:
    return Path(value)


def main() -> None:
    _register()
    cli(prog_name="herald")
