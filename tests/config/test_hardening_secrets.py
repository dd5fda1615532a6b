"""Issue 9, defects 9 and 11: weak secrets are refused (and doctor says CRITICAL); data_dir is private."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from herald.config import ConfigError, ensure_secrets, load_settings, secret_problems
from herald.ops.doctor import diagnose


@pytest.mark.parametrize("key", ["ADMIN_TOKEN", "SECRET_KEY"])
def test_short_secrets_are_refused_naming_the_key(tmp_path: Path, key: str):
    settings = load_settings(env={"HERALD_DATA_DIR": str(tmp_path), f"HERALD_{key}": "a" * 31})
    with pytest.raises(ConfigError, match=key.lower()) as err:
        ensure_secrets(settings)
    assert "a" * 31 not in str(err.value)  # the error names the key, never the secret


def test_a_short_secret_in_a_file_is_refused_too(tmp_path: Path):
    (tmp_path / "secret_key").write_text("b\n")
    with pytest.raises(ConfigError, match="secret_key"):
        ensure_secrets(load_settings(env={"HERALD_DATA_DIR": str(tmp_path)}))


def test_long_and_generated_secrets_pass(tmp_path: Path):
    given = ensure_secrets(
        load_settings(env={"HERALD_DATA_DIR": str(tmp_path), "HERALD_ADMIN_TOKEN": "x" * 32})
    )
    assert given.admin_token == "x" * 32 and len(given.secret_key or "") >= 32
    assert secret_problems(given) == []


def test_doctor_is_critical_about_weak_secrets(tmp_path: Path):
    settings = load_settings(env={"HERALD_DATA_DIR": str(tmp_path / "var"), "HERALD_ADMIN_TOKEN": "a"})
    settings = dataclasses.replace(settings, secret_key="b")
    report = diagnose(settings)
    assert report.exit_code == 2
    assert any("admin_token" in e for e in report.errors) and any("secret_key" in e for e in report.errors)


def test_secure_data_dir_makes_new_files_private(tmp_path: Path):
    # In a child process: the umask is the process's, and must not leak into this test run.
    data = tmp_path / "var"
    code = (
        "import sys, sqlite3\n"
        "from herald.config import load_settings, ensure_secrets, secure_data_dir\n"
        f"s = load_settings(env={{'HERALD_DATA_DIR': {str(data)!r}}})\n"
        "secure_data_dir(s)\n"
        "ensure_secrets(s)\n"
        "sqlite3.connect(s.sqlite_path).execute('create table t (x)')\n"
        "(s.log_dir / 'herald.log').write_text('x')\n"
        "from herald.mail.mailbox import MailboxTransport\n"
        "with MailboxTransport(s) as box:\n"
        "    box.send_bytes(b'Subject: private\\r\\n\\r\\nhi\\r\\n', 'h@example.org', 'a@example.org')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    settings = load_settings(env={"HERALD_DATA_DIR": str(data)})
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(settings.log_dir).st_mode) == 0o700
    for name in ("herald.db", "admin_token", "secret_key"):
        assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(settings.log_dir / "herald.log").st_mode) == 0o600
    # The Maildir holds private comments and unsubscribe tokens too: its folders and every message.
    maildir = [settings.mailbox_dir, *settings.mailbox_dir.rglob("*")]
    assert any(p.is_file() for p in maildir)
    for path in maildir:
        assert stat.S_IMODE(os.stat(path).st_mode) == (0o700 if path.is_dir() else 0o600), path
    report = diagnose(ensure_secrets(settings))
    assert not any("readable by other users" in w for w in report.warnings), report.warnings


def test_doctor_warns_about_files_others_can_read(tmp_path: Path):
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    settings = ensure_secrets(load_settings(env={"HERALD_DATA_DIR": str(data)}))
    (data / "herald.db").touch()
    os.chmod(data / "herald.db", 0o644)
    report = diagnose(settings)
    (warning,) = [w for w in report.warnings if "readable by other users" in w]
    assert "herald.db" in warning and str(data) in warning
