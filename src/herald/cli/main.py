"""``herald``: parse, build settings, call the library, exit with a named code."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from herald.config import ConfigError, Settings, configured_keys, ensure_secrets, load_settings

RET_OK = 0
RET_ERROR = 1
RET_USAGE = 2  # click's own code for bad arguments
RET_CONFIG = 3


#: Options of the ``herald`` group that take a value; they may also be written after the subcommand.
GLOBAL_OPTIONS = ("--config",)


class Context:
    """What every subcommand gets: the config path given (workers are started with the same one)."""

    def __init__(self, config_path: str | None, from_env: bool = False) -> None:
        self.config_path = config_path
        #: True when the path came from ``HERALD_CONFIG`` rather than ``--config``.
        self.from_env = from_env
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = ensure_secrets(load_settings(self.config_path))
            except ConfigError as exc:
                fail(f"configuration error: {exc}", RET_CONFIG)
        return self._settings

    def explicit(self, key: str) -> bool:
        """Whether ``key`` was set by the config file or ``HERALD_<KEY>`` (not left at its default)."""
        _ = self.settings  # load (and validate) first, so the file is known to be readable
        return key in configured_keys(self.config_path)

    def config_source(self) -> str:
        """Which configuration this process reads, in words."""
        if self.config_path is None:
            text = "none (built-in defaults; pass --config FILE or set HERALD_CONFIG)"
        else:
            where = "HERALD_CONFIG" if self.from_env else "--config"
            text = f"{self.config_path} (from {where})"
        overrides = sorted(n for n in os.environ if n.startswith("HERALD_") and n != "HERALD_CONFIG")
        if overrides:
            text += f", overridden by {', '.join(overrides)}"
        return text


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """Move the group's own options to the front, so ``herald up --config F`` means ``herald --config F up``.

    Click only accepts a group's options before the subcommand; users (and ``scripts/up``, which appends its
    arguments after ``up``) write them anywhere. Everything after ``--`` is left alone.
    """
    front: list[str] = []
    rest: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        token = items[i]
        if token == "--":
            rest.extend(items[i:])
            break
        if token in GLOBAL_OPTIONS:
            if i + 1 == len(items):
                # Moved to the front, it would take the subcommand's name as its value.
                raise click.BadOptionUsage(token, f"Option '{token}' requires an argument.")
            front.extend(items[i : i + 2])
            i += 2
            continue
        if any(token.startswith(f"{name}=") for name in GLOBAL_OPTIONS):
            front.append(token)
        else:
            rest.append(token)
        i += 1
    return front + rest


#: Which module of ``herald.cli`` defines each command. A command is imported only when it runs, so
#: ``herald check`` does not pay for the web stack or the migrations (half a second of imports). A command
#: missing here is still found: :func:`_register` imports every module.
LAZY_COMMANDS = {
    "serve": "serve",
    "up": "serve",
    "db": "data",
    "load": "data",
    "user": "data",
    "mailbox": "mailbox",
    "check": "ops",
    "doctor": "ops",
    "test-send": "testsend",
    "worker": "workers",
    "workers": "workers",
    "relay": "workers",
    "queue": "workers",
}


class HeraldGroup(click.Group):
    """The top-level group: global options are accepted before or after the subcommand; subcommands are
    imported when used."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = hoist_global_options(args)
        return super().parse_args(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            _load(LAZY_COMMANDS[cmd_name])
        if cmd_name not in self.commands:
            _register()
        return self.commands.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register()
        return sorted(self.commands)


def fail(message: str, code: int = RET_ERROR) -> None:
    click.echo(f"herald: {message}", err=True)
    sys.exit(code)


pass_ctx = click.make_pass_decorator(Context)


@click.group(cls=HeraldGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    """herald: notification backend for issue trackers.

    --config may be given before or after the command (herald up --config herald.toml).
    """
    from_env = ctx.get_parameter_source("config_path") is ParameterSource.ENVIRONMENT
    ctx.obj = Context(config_path, from_env=from_env)


def _load(name: str) -> None:
    import importlib

    for command in importlib.import_module(f"herald.cli.{name}").COMMANDS:
        cli.add_command(command)


def _register() -> None:
    """Import every command module (``--help`` lists them all; tests call it once)."""
    for name in sorted(set(LAZY_COMMANDS.values())):
        _load(name)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def path_arg(value: str) -> Path:
    return Path(value)


def main() -> None:
    cli(prog_name="herald")
