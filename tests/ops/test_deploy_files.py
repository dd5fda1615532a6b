"""deploy/grafana/herald-dashboard.json and deploy/prometheus/herald-alerts.yml: valid files whose every
metric (and every label value they select on) exists in a real scrape: a real worker (in this process)
delivers through aiosmtpd and the SQL queue, then /metrics is rendered. ``promtool`` checks the rules and
the scrape."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from herald.config import DispatchMode
from herald.ops.metrics import HeraldCollector, render_metrics
from herald.queue import make_queue
from herald.web.dispatcher import build_dispatcher
from herald.worker import Worker
from tests.support.beds import Bed, notification
from tests.support.services import service_missing
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "herald-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "herald-alerts.yml"
# A selector: a metric name, optionally with label matchers.
_SELECTOR = re.compile(r"\b((?:herald_|up\b)[a-z_]*)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_MATCHER_PLAIN = re.compile(r'(\w+)="([^"]*)"')


@pytest.fixture
def real_scrape(bed: Bed) -> bytes:
    """One scrape after a real worker delivered a change (one recipient refused with 451, one with 550)."""
    everyone = dataclasses.replace(bed.settings.async_emails, all=True)
    settings = dataclasses.replace(
        bed.settings, async_emails=everyone, retry_base_seconds=5.0, retry_max_seconds=10.0
    )
    bed.server.refuse_recipient("carol@example.org", "451 4.7.1 greylisted")
    bed.server.refuse_recipient("dave@example.org")
    worker = Worker(settings, 1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        cs = bed.changeset()
        dispatcher = build_dispatcher(settings, bed.db)
        try:
            dispatcher.after_commit(cs, DispatchMode.ASYNC)
        finally:
            dispatcher.close()
        wait_until(lambda: notification(bed.db, cs).attempts >= 1 and len(bed.server.messages) >= 1, "a run")
        greylisted = ("herald_delivery_attempts_total", {"outcome": "retrying", "smtp_class": "4xx"})
        wait_until(lambda: greylisted in _samples(_render(bed, settings), nonzero=True), "the counts")
        return _render(bed, settings)  # scraped while the worker is alive: its heartbeat is in it
    finally:
        worker.request_stop()
        thread.join(timeout=30)


def _render(bed: Bed, settings) -> bytes:
    with make_queue(settings) as queue:
        return render_metrics(HeraldCollector(settings, bed.db, queue))


def _samples(text: bytes, *, nonzero: bool = False) -> list[tuple[str, dict[str, str]]]:
    families = text_string_to_metric_families(text.decode())
    return [(s.name, s.labels) for f in families for s in f.samples if s.value or not nonzero]


def _exprs_of_dashboard() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    exprs = []
    ids = set()
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids and {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        ids.add(panel["id"])
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    assert len(exprs) >= 15
    return exprs


def _exprs_of_rules() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    # What herald check alerts on, each with a rule.
    assert {
        "HeraldNoLiveWorker",
        "HeraldWorkerStuck",
        "HeraldQueueUnreachable",
        "HeraldScrapeFailing",
        "HeraldRelayDown",
        "HeraldHigh4xxShare",
        "HeraldDeadLettersGrowing",
        "HeraldOldestUndelivered",
        "HeraldLateDelivery",
    } <= set(names)
    return [rule["expr"] for rule in rules]


def _missing(exprs: list[str], samples: list[tuple[str, dict[str, str]]]) -> list[str]:
    missing = []
    for expr in exprs:
        for name, matchers in _SELECTOR.findall(expr):
            if name == "up":  # Prometheus' own, per scrape target
                continue
            with_name = [labels for sample, labels in samples if sample == name]
            if not with_name:
                missing.append(f"{name} (in {expr!r})")
                continue
            for label, op, value in _MATCHER.findall(matchers):
                if op == "=" and not any(labels.get(label) == value for labels in with_name):
                    missing.append(f'{name}{{{label}="{value}"}} (in {expr!r})')
    return missing


def test_the_dashboard_uses_only_metrics_of_a_real_scrape(real_scrape: bytes):
    assert _missing(_exprs_of_dashboard(), _samples(real_scrape)) == []


def test_the_alert_rules_use_only_metrics_of_a_real_scrape(real_scrape: bytes):
    assert _missing(_exprs_of_rules(), _samples(real_scrape)) == []


def test_promtool_accepts_the_rules_and_the_scrape(real_scrape: bytes):
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool (Debian: apt-get install --no-install-recommends prometheus)")
    rules = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    metrics = subprocess.run([promtool, "check", "metrics"], input=real_scrape, capture_output=True)
    assert metrics.returncode == 0, metrics.stdout + metrics.stderr


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    labels = {"job": "herald", "instance": "web:8080", **labels}
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{text}}}", "values": values}


ATTEMPTS, LATENCY = "herald_delivery_attempts_total", "herald_delivery_latency_seconds"
# (alert, input series, evaluation time, fires?) — each failure herald check reports, as the rules see it.
_CASES = [
    ("HeraldNoLiveWorker", [_series("herald_workers_alive", "0x30"),
                            _series("herald_backend_workers_configured", "2x30")], "3m", True),
    ("HeraldNoLiveWorker", [_series("herald_workers_alive", "1x30"),
                            _series("herald_backend_workers_configured", "2x30")], "3m", False),
    ("HeraldWorkerUnresponsive", [_series("herald_workers_unresponsive", "1x30")], "3m", True),
    ("HeraldWorkerStuck", [_series("herald_worker_oldest_job_seconds", "200x30"),
                           _series("herald_stale_after_seconds", "120x30")], "4m", True),
    ("HeraldWorkerStuck", [_series("herald_worker_oldest_job_seconds", "20x30"),
                           _series("herald_stale_after_seconds", "120x30")], "4m", False),
    ("HeraldQueueUnreachable", [_series("herald_up", "0x30", part="queue")], "3m", True),
    ("HeraldDatabaseUnreachable", [_series("herald_up", "0x30", part="database")], "3m", True),
    ("HeraldScrapeFailing", [_series("up", "0x30")], "4m", True),
    ("HeraldRelayDown", [_series("herald_relay_up", "0x30")], "3m", True),
    ("HeraldRelayDown", [_series("herald_relay_up", "1x30")], "3m", False),
    ("HeraldHigh4xxShare", [_series(ATTEMPTS, "0+30x40", outcome="sent", smtp_class="2xx"),
                            _series(ATTEMPTS, "0+30x40", outcome="retrying", smtp_class="4xx")], "25m", True),
    ("HeraldHigh4xxShare", [_series(ATTEMPTS, "0+30x40", outcome="sent", smtp_class="2xx"),
                            _series(ATTEMPTS, "0+1x40", outcome="retrying", smtp_class="4xx")], "25m", False),
    ("HeraldDeadLetters", [_series("herald_queue_jobs", "2x30", state="dead")], "10m", True),
    ("HeraldDeadLettersGrowing", [_series("herald_queue_jobs", "0 0 0 1 2 3 3 3", state="dead")], "6m", True),
    ("HeraldDeadLettersGrowing", [_series("herald_queue_jobs", "3x30", state="dead")], "20m", False),
    ("HeraldOldestUndelivered", [_series("herald_oldest_unfinished_notification_seconds", "300x30"),
                                 _series("herald_stale_after_seconds", "120x30")], "3m", True),
    ("HeraldOldestUndeliveredCritical", [_series("herald_oldest_unfinished_notification_seconds", "300x30"),
                                         _series("herald_stale_after_seconds", "120x30")], "3m", False),
    ("HeraldLateDelivery", [_series(f"{LATENCY}_count", "0+10x40"),
                            _series(f"{LATENCY}_bucket", "0+5x40", le="120.0")], "25m", True),
    ("HeraldLateDelivery", [_series(f"{LATENCY}_count", "0+10x40"),
                            _series(f"{LATENCY}_bucket", "0+10x40", le="120.0")], "25m", False),
]  # fmt: skip


def test_the_alert_rules_fire_on_each_failure_and_stay_quiet_otherwise(tmp_path: Path):
    """``promtool test rules`` on synthetic series (annotations left out: only what fires is compared)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool (Debian: apt-get install --no-install-recommends prometheus)")
    doc = yaml.safe_load(ALERTS.read_text())
    severity: dict[str, str] = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
            severity[rule["alert"]] = rule["labels"]["severity"]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(doc))
    exprs = {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}
    tests = []
    for alert, series, at, fires in _CASES:
        # An alert carries the labels of its series (an aggregation keeps none), and its severity.
        kept = {} if exprs[alert].startswith("sum(") else dict(_MATCHER_PLAIN.findall(series[0]["series"]))
        labels = {**kept, "severity": severity[alert]}
        tests.append(
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": alert,
                        "exp_alerts": [{"exp_labels": labels}] if fires else [],
                    }
                ],
            }
        )
    spec = tmp_path / "tests.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {alert for alert, *_ in _CASES} == set(severity)  # every rule has a case
