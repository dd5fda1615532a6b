"""`herald db upgrade`, `herald load` and `herald user token` through the real command line parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from herald.cli.main import RET_CONFIG, RET_ERROR, _register, cli
from herald.tracker.db import Database
from herald.tracker.models import User
from herald.tracker.users import authenticate

_register()


@pytest.fixture
def run(tmp_path: Path):
    env = {"HERALD_DATA_DIR": str(tmp_path / "var"), "HERALD_CONFIG": ""}

    def invoke(*args: str, extra_env: dict[str, str] | None = None):
        return CliRunner().invoke(cli, list(args), env={**env, **(extra_env or {})}, catch_exceptions=False)

    return invoke


def test_db_upgrade_creates_the_schema(run, tmp_path):
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "database at revision 0004" in result.output
    assert (tmp_path / "var" / "herald.db").exists()


def test_load_yaml_then_use_the_tokens(run, tmp_path):
    doc = tmp_path / "seed.yaml"
    doc.write_text(
        """
users:
  - {username: ann, email: ann@example.org, language: fr}
  - {username: ben, email: ben@example.org}
projects:
  - {name: web, public: false, members: [ann, ben], admins: [ann]}
trackers:
  - project: web
    name: bugs
    item_name: bug
    fields:
      - {name: title, type: string, required: true}
      - {name: status, type: select, options: [Open, Closed]}
    semantics: {title: title, status: status}
artifacts:
  - {tracker: web/bugs, author: ann, values: {title: First, status: Open}, comment: "hello @ben"}
"""
    )
    result = run("load", str(doc))
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["users"], out["projects"], out["trackers"], out["artifacts"]) == (2, 1, 1, 1)
    db = Database(f"sqlite:///{tmp_path / 'var' / 'herald.db'}")
    with db.session() as s:
        assert authenticate(s, out["tokens"]["ann"]).username == "ann"
    result = run("user", "token", "ann")
    assert result.exit_code == 0
    with db.session() as s:
        assert authenticate(s, out["tokens"]["ann"]) is None
        assert authenticate(s, result.output.strip()).username == "ann"
    db.dispose()


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("bad.yaml", "users: [unclosed", "not valid YAML"),
        ("bad.json", "{", "not valid JSON"),
        ("list.yaml", "- a\n- b\n", "document must be an object"),
        ("extra.yaml", "groups: []\n", "unknown key"),
        ("user.yaml", "users:\n  - {username: x}\n", "missing: email"),
        (
            "ref.yaml",
            "trackers:\n  - {project: nope, name: t, fields: [{name: a, type: string}]}\n",
            "no project named",
        ),
        (
            "half.yaml",
            "users:\n  - {username: ok, email: ok@example.org}\n"
            "  - {username: 'B A D', email: b@example.org}\n",
            "username",
        ),
    ],
)
def test_malformed_documents_load_nothing(run, tmp_path, name, content, fragment):
    doc = tmp_path / name
    doc.write_text(content)
    result = CliRunner().invoke(
        cli, ["load", str(doc)], env={"HERALD_DATA_DIR": str(tmp_path / "var"), "HERALD_CONFIG": ""}
    )
    assert result.exit_code == RET_ERROR, result.output
    assert fragment in result.output
    assert "nothing was loaded" in result.output
    db = Database(f"sqlite:///{tmp_path / 'var' / 'herald.db'}")
    with db.session() as s:
        assert s.query(User).count() == 0
    db.dispose()


def test_configuration_errors_stop_with_one_line(run, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["db", "upgrade"],
        env={"HERALD_DATA_DIR": str(tmp_path), "HERALD_ASYNC_EMAILS": "yes", "HERALD_CONFIG": ""},
    )
    assert result.exit_code == RET_CONFIG
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1 and "async_emails = 'yes'" in lines[0]


def test_unknown_user_for_token(run, tmp_path):
    run("db", "upgrade")
    result = CliRunner().invoke(
        cli, ["user", "token", "ghost"], env={"HERALD_DATA_DIR": str(tmp_path / "var")}
    )
    assert result.exit_code == RET_ERROR
    assert "no user named 'ghost'" in result.output
