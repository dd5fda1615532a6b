"""``herald up`` / ``serve`` bind their port first: a busy port is one line and a non-zero exit."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from herald.cli.listen import follow_address
from herald.cli.main import RET_ERROR, RET_USAGE, Context
from herald.cli.serve import _workers_phrase
from herald.config import load_settings
from tests.cli.helpers import clean_env, run_herald
from tests.support.services import free_port
from tests.support.waiting import wait_until


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", ["up", "serve"])
def test_a_busy_port_is_one_line_before_anything_starts(tmp_path, busy_port, command):
    config = tmp_path / "herald.toml"
    config.write_text('async_emails = "all"\n')
    var = tmp_path / "var"

    # As scripts/up writes it: the subcommand first, then --config.
    done = run_herald([command, "--config", str(config), "--port", str(busy_port)], tmp_path, clean_env(var))

    assert done.returncode == RET_ERROR
    assert done.stderr == (
        f"herald {command}: port {busy_port} on 127.0.0.1 is in use — "
        "stop the other process or pass --port N\n"
    )
    assert done.stdout == ""  # no banner
    assert not (var / "log").exists()  # no log opened, no supervisor started
    assert not (var / "herald.db").exists()  # no schema created, no demo seeded


def test_an_out_of_range_port_is_a_usage_error(tmp_path):
    done = run_herald(["up", "--port", "70000"], tmp_path, clean_env(tmp_path / "var"))

    assert done.returncode == RET_USAGE
    assert "'--port': 70000 is not in the range 0<=x<=65535" in done.stderr
    assert done.stdout == ""


def test_a_host_that_does_not_resolve_is_one_line(tmp_path):
    args = ["serve", "--host", "no-such-host.invalid", "--port", "0"]
    done = run_herald(args, tmp_path, clean_env(tmp_path))

    assert done.returncode == RET_ERROR
    assert done.stderr.startswith("herald serve: cannot listen on 'no-such-host.invalid': not an address")
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""


def test_base_url_follows_the_address_unless_set(tmp_path, monkeypatch):
    monkeypatch.delenv("HERALD_CONFIG", raising=False)
    monkeypatch.setenv("HERALD_DATA_DIR", str(tmp_path))
    ctx = Context(None)
    assert not ctx.explicit("base_url")

    moved = follow_address(ctx.settings, "127.0.0.2", 8081, mail_domain=True)
    assert (moved.base_url, moved.mail_domain) == ("http://127.0.0.2:8081", "127.0.0.2")
    # A wildcard address is no place for a mail link: the host stays, the port moves.
    assert follow_address(ctx.settings, "0.0.0.0", 9000, mail_domain=True).base_url == "http://127.0.0.1:9000"
    assert follow_address(ctx.settings, "::1", 9000, mail_domain=False).base_url == "http://[::1]:9000"

    config = tmp_path / "herald.toml"
    config.write_text('base_url = "https://tracker.example.org"\n')
    assert Context(str(config)).explicit("base_url")
    monkeypatch.setenv("HERALD_BASE_URL", "https://tracker.example.org")
    assert Context(None).explicit("base_url")


@pytest.mark.parametrize(
    ("env", "phrase"),
    [
        ({}, "workers=1 (recovery only: async_emails = false)"),
        ({"HERALD_ASYNC_EMAILS": "all"}, "workers=2"),
        ({"HERALD_ASYNC_EMAILS": "all", "HERALD_NB_BACKEND_WORKERS": "5"}, "workers=5"),
        ({"HERALD_NB_BACKEND_WORKERS": "0"}, "workers=0"),
    ],
)
def test_the_banner_counts_the_workers_that_run(env, phrase, tmp_path: Path):
    settings = load_settings(env={"HERALD_DATA_DIR": str(tmp_path), **env})
    assert _workers_phrase(settings) == phrase


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_up_hands_the_followed_base_url_to_its_workers(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "herald", "up", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(tmp_path / "var"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:

        def healthy() -> bool:
            assert proc.poll() is None, "herald up exited"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code in (200, 503)
            except httpx.TransportError:
                return False

        wait_until(healthy, "herald up to answer /healthz", timeout=30)
        [supervisor] = _children(proc.pid)
        env = _environ(supervisor)
        assert env["HERALD_BASE_URL"] == f"http://127.0.0.1:{port}"
        assert env["HERALD_MAIL_DOMAIN"] == "127.0.0.1"
    finally:
        proc.terminate()
        proc.wait(timeout=40)
    banner = proc.stdout.read().decode()  # type: ignore[union-attr]
    assert banner.splitlines()[:2] == [
        f"herald up: http://127.0.0.1:{port}  queue=sql  async_emails=false  "
        f"workers=1 (recovery only: async_emails = false)  "
        f"mail=built-in mailbox {tmp_path / 'var' / 'mailbox'} (herald mailbox list)",
        f"mail links: http://127.0.0.1:{port}",
    ]
