"""What the service acknowledged survives a SIGKILL, on SQLite and PostgreSQL.

One client posts decisions, their outcomes and audited admin changes, another starts agent
runs that take a step and then wait for approval, and approves them; the service is killed
mid-stream. Every acknowledged outcome, audit event, run step and approval must be stored,
every version switch with its event, and the audit chain must verify. Decisions are buffered
in memory by design: only those acknowledged within the last flush interval (plus one write)
may be lost.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import func, select

from aiassist.modules.priority import PriorityModule
from aiassist.settings import Settings
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.keys import KeyStore
from aiassist.store.models import (
    AgentApproval,
    AgentToolCall,
    AuditEvent,
    DecisionRecord,
    DriftRoute,
    OutcomeRecord,
)

from .conftest import ServiceProcess, free_port

FLUSH_SECONDS = 0.2
ONE_WRITE_SECONDS = 0.5  # a flush that started before the kill may not have committed
ENOUGH = 150  # acknowledged rounds before the kill
AGENT_ENOUGH = 10  # acknowledged runs and approvals before the kill
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Acknowledged:
    decisions: dict[str, float] = field(default_factory=dict)  # id -> when acknowledged
    outcomes: list[str] = field(default_factory=list)
    rollbacks: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # tool call ids reported succeeded
    approvals: list[str] = field(default_factory=list)  # approval ids answered 200
    enough: threading.Event = field(default_factory=threading.Event)
    agent_enough: threading.Event = field(default_factory=threading.Event)


def _load(url: str, token: str, acked: Acknowledged) -> None:
    """Decide, report the outcome, roll a version back: until the service is gone."""
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=5) as client:
        for i in range(100_000):
            try:
                decided = client.post(
                    "/v1/priority/decide", json={"features": PriorityModule.example}
                )
                decided.raise_for_status()
                decision_id = decided.json()["decision_id"]
                acked.decisions[decision_id] = time.monotonic()
                outcome = {"waited_s": 3.0, "ran_s": 1.5, "deadline_met": True}
                client.post(
                    "/v1/priority/outcome", json={"decision_id": decision_id, "outcome": outcome}
                ).raise_for_status()
                acked.outcomes.append(decision_id)
                client.post(
                    f"/v1/drift/versions/v{i}/rollback", json={"to": "stable"}
                ).raise_for_status()
                acked.rollbacks.append(f"v{i}->stable")
            except httpx.TransportError:
                return
            if len(acked.rollbacks) >= ENOUGH:
                acked.enough.set()


def _agent_load(url: str, token: str, acked: Acknowledged) -> None:
    """Start a run that notes, then waits to delete; approve the deletion: until it is gone."""
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for i in range(100_000):
            script = [
                {"tool_calls": [{"name": "create_note", "arguments": {"text": f"n{i}"}}]},
                {
                    "tool_calls": [
                        {"name": "delete_customer", "arguments": {"customer_id": f"C{i}"}}
                    ]
                },
                "done",
            ]
            body = {
                "task": f"note and delete C{i}",
                "tools": ["create_note", "delete_customer"],
                "provider": "test",
                "script": script,
            }
            try:
                run = client.post("/v1/agent/runs", json=body)
                run.raise_for_status()
                note = run.json()["calls"][0]
                assert note["tool"] == "create_note" and note["status"] == "succeeded", run.text
                acked.steps.append(note["id"])
                [approval] = run.json()["pending_approvals"]
                client.post(
                    f"/v1/approvals/{approval}", json={"decision": "approve", "wait_seconds": 0}
                ).raise_for_status()
                acked.approvals.append(approval)
            except httpx.TransportError:
                return
            if len(acked.approvals) >= AGENT_ENOUGH:
                acked.agent_enough.set()


def test_what_was_acknowledged_survives_a_sigkill(settings: Settings, keys: KeyStore) -> None:
    service = ServiceProcess(settings, free_port())
    service.env |= {
        "AIASSIST_RECORD_FLUSH_SECONDS": str(FLUSH_SECONDS),
        "AIASSIST_AGENT_TOOLS": "tests.mcp_tools:tools",
        "AIASSIST_TEST_MCP_EFFECTS": str(settings.data_dir / "effects.jsonl"),
        "PYTHONPATH": str(ROOT),
    }
    service.start()
    token = keys.create("backend", ["admin"], actor="test").token
    acked = Acknowledged()
    clients = [
        threading.Thread(target=load, args=(service.url, token, acked))
        for load in (_load, _agent_load)
    ]
    for client in clients:
        client.start()
    try:
        assert acked.enough.wait(120), "the load never reached its first rounds"
        assert acked.agent_enough.wait(120), "the agent load never reached its first runs"
    finally:
        service.kill()
        killed_at = time.monotonic()
        for client in clients:
            client.join(30)

    engine = make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            outcomes = set(conn.scalars(select(OutcomeRecord.decision_id)))
            decisions = set(conn.scalars(select(DecisionRecord.id)))
            rollbacks = set(
                conn.scalars(
                    select(AuditEvent.subject).where(AuditEvent.kind == "drift.rolled_back")
                )
            )
            routes = {f"{r.version}->{r.target}" for r in conn.execute(select(DriftRoute))}
            steps = set(
                conn.scalars(select(AgentToolCall.id).where(AgentToolCall.status == "succeeded"))
            )
            approved = set(
                conn.scalars(select(AgentApproval.id).where(AgentApproval.status == "approved"))
            )
            stored_events = conn.scalar(select(func.count()).select_from(AuditEvent))
        check = AuditLog(make_sessionmaker(engine)).verify()
    finally:
        engine.dispose()

    assert len(acked.rollbacks) >= ENOUGH
    assert set(acked.outcomes) <= outcomes, "an acknowledged outcome was lost"
    assert set(acked.rollbacks) <= rollbacks, "an acknowledged audit event was lost"
    assert routes == rollbacks, "a version switch and its audit event were not stored together"
    assert set(acked.steps) <= steps, "an acknowledged run step was lost"
    assert set(acked.approvals) <= approved, "an acknowledged approval was lost"
    assert check.ok, check.reason
    assert check.events == stored_events
    lost = {d: at for d, at in acked.decisions.items() if d not in decisions}
    oldest_lost = max((killed_at - at for at in lost.values()), default=0.0)
    assert oldest_lost <= FLUSH_SECONDS + ONE_WRITE_SECONDS, (len(lost), oldest_lost)
