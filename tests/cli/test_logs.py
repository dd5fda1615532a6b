"""Where herald's log lines go and how they look, from a real delivery (aiosmtpd, SQLite) into real files."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from pathlib import Path

import pytest

from herald.cli.logs import JsonFormatter, setup_logging
from herald.config import DispatchMode
from herald.delivery import Deliverer
from herald.mail import make_pool
from tests.support.beds import Bed

START = re.compile(
    r"^\S+ \S+ INFO \[herald\.notification\] Notification: Start notification changeset_id=(\d+) "
    r"artifact_id=\d+ recipients=3 mode=async$"
)
END = re.compile(
    r"^\S+ \S+ INFO \[herald\.notification\] Notification: End notification changeset_id=(\d+) "
    r"artifact_id=\d+ recipients=3 sent=2 failed=1 retrying=0 duration_ms=\d+\.\d$"
)


@pytest.fixture
def herald_logger():
    root = logging.getLogger("herald")
    saved = (list(root.handlers), root.level, root.propagate)
    yield root
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[1])
    root.propagate = saved[2]


def deliver(bed: Bed) -> int:
    bed.server.refuse_recipient("dave@example.org")
    cs = bed.changeset()
    Deliverer(bed.db, bed.settings, make_pool(bed.settings, max_connections=2)).deliver(
        cs, holder="t", mode=DispatchMode.ASYNC
    )
    return cs


def test_text_lines_go_to_the_file_only_with_the_start_end_lines_unchanged(bed: Bed, herald_logger, capfd):
    settings = dataclasses.replace(bed.settings, log_dir=bed.tmp_path / "log")
    setup_logging(settings, "worker.log")
    cs = deliver(bed)
    lines = (settings.log_dir / "worker.log").read_text().splitlines()
    assert [int(m.group(1)) for line in lines if (m := START.match(line))] == [cs]
    assert [int(m.group(1)) for line in lines if (m := END.match(line))] == [cs], lines
    sent = [line for line in lines if "Notification: sent " in line]
    assert len(sent) == 2 and all(f"changeset_id={cs} " in line and "reply='250 " in line for line in sent)
    (failed,) = [line for line in lines if "delivery failed" in line]
    assert f"changeset_id={cs} recipient=dave@example.org reply='550 " in failed
    assert len(lines) == len(set(lines))  # each event once
    assert all(f"changeset_id={cs}" in line for line in lines if "Notification:" in line)
    out, err = capfd.readouterr()
    assert "Notification" not in err and "Notification" not in out  # not a terminal: nothing on stderr


def test_log_dir_dash_sends_every_line_to_stderr_and_writes_no_file(bed: Bed, herald_logger, capfd, tmp_path):
    settings = dataclasses.replace(bed.settings, log_dir=Path("-"), log_format="json")
    assert settings.log_to_stderr
    setup_logging(settings, "worker.log")
    cs = deliver(bed)
    _, err = capfd.readouterr()
    entries = [json.loads(line) for line in err.splitlines()]
    assert [e["changeset_id"] for e in entries if e["message"].startswith("Notification: Start")] == [cs]
    assert not (tmp_path / "-").exists() and not list(tmp_path.rglob("worker.log"))


def test_json_lines_lift_the_pairs_and_keep_extras_and_exceptions():
    record = logging.LogRecord(
        "herald.notification",
        logging.WARNING,
        __file__,
        1,
        "Notification: delivery failed changeset_id=%d recipient=%s reply=%r; will retry in %s",
        (12, "a@example.org", "451 4.7.1 greylisted, try later", "2s"),
        None,
    )
    record.job_id = "j-1"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["changeset_id"] == 12 and entry["recipient"] == "a@example.org"
    assert entry["reply"] == "451 4.7.1 greylisted, try later"
    assert entry["job_id"] == "j-1" and entry["level"] == "WARNING"
    assert entry["logger"] == "herald.notification"
    assert entry["message"].startswith("Notification: delivery failed changeset_id=12 ")
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exc_info"]
    assert "\n" not in JsonFormatter().format(record)  # one line, even with a traceback
