"""Flows: line-precise validation, and the flow model's turns from a conversation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aiassist.agent.flows import FlowError, FlowModel, parse_flow
from aiassist.agent.providers.base import Message, ModelTurn, ProviderError, Usage
from aiassist.agent.providers.test import TestModel

LEAD_FLOW = """\
name: lead_intake
description: inbound email -> CRM lead -> intro email
minutes_saved: 6
steps:
  - id: understand
    agent: |
      Who wrote this and what do they want?
      From: {{ input.sender }}
      {{ input.text }}
    output: {name: string, interest: string}
  - id: lead
    tool: create_crm_lead
    args:
      name: "{{ steps.understand.name }}"
      email: "{{ input.sender }}"
      interest: "{{ steps.understand.interest }}"
  - id: intro
    tool: send_email
    when: "steps.lead.status == 'new'"
    args:
      to: "{{ input.sender }}"
      subject: Welcome
      body: "Hello {{ steps.understand.name }}, about {{ steps.understand.interest }}..."
  - id: follow_up
    tool: update_crm_lead
    args: {lead_id: "{{ steps.lead.id }}", status: contacted, follow_up_in_days: 3}
"""

INPUT = {"sender": "zhangsan@example.com", "text": "I'm Zhang San, tell me about the product."}


def test_a_flow_parses_and_names_its_tools() -> None:
    flow = parse_flow(LEAD_FLOW)
    assert flow.name == "lead_intake" and flow.minutes_saved == 6
    assert flow.tools == ["create_crm_lead", "send_email", "update_crm_lead"]
    assert flow.needs_model


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nsteps:\n  - id: a\n    tool: t\n    colour: red\n", [(5, "colour")]),
        (
            "name: x\nsteps:\n  - id: a\n    tool: t\n  - id: a\n    tool: u\n",
            [(5, "steps.1.id: two steps")],
        ),
        ("name: x\nsteps:\n  - id: a\n    tool: t\n    attempts: 99\n", [(5, "attempts")]),
        ("name: x\nsteps:\n  - id: a\n    tool: t\n    args: {n: '{{ oops'}\n", [(5, "args.n")]),
        ("name: x\nsteps:\n  - id: a\n    tool: t\n    when: 'a ==== b'\n", [(5, "when")]),
        ("name: x\nsteps: [\n", [(3, "not valid YAML")]),
        ("- just a list\n", [(1, "a mapping")]),
        ("name: 9bad\nsteps: []\n", [(1, "name"), (2, "steps")]),
    ],
)
def test_validation_names_the_line(text: str, expected: list[tuple[int, str]]) -> None:
    with pytest.raises(FlowError) as raised:
        parse_flow(text, "flows/x.yaml")
    problems = raised.value.problems
    assert len(problems) >= len(expected), problems
    for (line, fragment), (got_line, message) in zip(expected, problems, strict=False):
        assert got_line == line and fragment in message, problems
    assert str(raised.value).startswith("flows/x.yaml:")


def tool_result(call_id: str, result: Any) -> Message:
    return Message("tool", json.dumps(result), call_id=call_id)


async def test_the_flow_model_walks_the_steps() -> None:
    extractor = TestModel(['{"name": "Zhang San", "interest": "the product"}'])
    model = FlowModel(parse_flow(LEAD_FLOW), INPUT, extractor)
    history: list[Message] = [Message("user", "flow lead_intake")]

    async def turn() -> ModelTurn:
        answer = await model.complete(history, [])
        history.append(Message("assistant", answer.text, answer.tool_calls))
        return answer

    first = await turn()
    [call] = first.tool_calls
    assert (call.id, call.name) == ("lead~1", "create_crm_lead")
    assert call.arguments == {
        "name": "Zhang San",
        "email": "zhangsan@example.com",
        "interest": "the product",
    }
    assert first.usage != Usage()  # the agent step's tokens count
    history.append(tool_result("lead~1", {"id": 7, "status": "new"}))

    second = await turn()  # the agent step is not asked again: its answer is in the notes
    assert [c.name for c in second.tool_calls] == ["send_email"]
    assert second.tool_calls[0].arguments["body"].startswith("Hello Zhang San, about the product")
    history.append(tool_result("intro~1", {"error": "mail server down", "retryable": True}))

    retry = await turn()
    assert [c.id for c in retry.tool_calls] == ["intro~2"]
    history.append(tool_result("intro~2", {"id": 1}))

    third = await turn()
    assert third.tool_calls[0].arguments == {
        "lead_id": 7,  # one expression keeps its type
        "status": "contacted",
        "follow_up_in_days": 3,
    }
    history.append(tool_result("follow_up~1", {"id": 7, "status": "contacted"}))
    done = await turn()
    assert done.tool_calls == () and json.loads(done.text or "")["done"] is True


async def test_conditions_loops_and_failures() -> None:
    flow = parse_flow(
        """
name: tickets
steps:
  - id: open
    tool: list_tickets
  - id: assign
    tool: assign_ticket
    for_each: "steps.open | selectattr('category', 'equalto', 'billing') | list"
    args: {ticket_id: "{{ item.id }}", assignee: li}
    attempts: 2
  - id: never
    when: "steps.assign | length > 5"
    tool: daily_report
"""
    )
    model = FlowModel(flow, {})
    history: list[Message] = []
    assert [c.id for c in (await model.complete(history, [])).tool_calls] == ["open~1"]
    tickets = [{"id": i, "category": c} for i, c in [(1, "billing"), (2, "x"), (3, "billing")]]
    history.append(tool_result("open~1", tickets))
    calls = (await model.complete(history, [])).tool_calls
    assert [(c.id, c.arguments["ticket_id"]) for c in calls] == [
        ("assign.0~1", 1),
        ("assign.1~1", 3),
    ]
    history += [tool_result("assign.0~1", {"ok": 1}), tool_result("assign.1~1", {"ok": 3})]
    done = await model.complete(history, [])
    assert done.tool_calls == ()  # `never` skipped: two assignments, not more than five

    busy = {"error": "busy", "retryable": True}
    failing = [
        tool_result("open~1", tickets),
        tool_result("assign.0~1", busy),
        tool_result("assign.0~2", busy),
    ]
    with pytest.raises(ProviderError, match="step 'assign' failed after 2 attempts: busy"):
        await model.complete(failing, [])


async def test_an_agent_step_needs_a_model_and_a_json_answer() -> None:
    flow = parse_flow(LEAD_FLOW)
    with pytest.raises(ProviderError, match="needs a language model"):
        FlowModel(flow, INPUT)
    chatty = FlowModel(flow, INPUT, TestModel(["Sure! The name is Zhang San."]))
    with pytest.raises(ProviderError, match="did not answer JSON"):
        await chatty.complete([], [])
