"""Evaluating an agent on a task suite: pass^k, tool-call accuracy, tokens and cost.

A suite is YAML. Each task runs `k` times against the configured provider (or the test
model, with a `script`, for a dry run of the suite itself); a trial passes when the run
ends in the expected status, made the expected calls, and the end state checks hold.
End-state checks call `read` tools after the run, so a suite works on a user's own
connectors without knowing their storage:

    k: 3
    tasks:
      - name: lead-and-email
        task: Customer Zhang San (zhangsan@example.com) wants an intro: create a lead, email him.
        tools: [create_crm_lead, send_email]
        expect:
          status: succeeded
          calls:
            - create_crm_lead
            - {tool: send_email, arguments: {to: zhangsan@example.com}}
          end_state:
            - {tool: find_lead, arguments: {email: zhangsan@example.com}, expect: {found: true}}

`pass^k` is the share of tasks whose k trials all passed: an agent that succeeds half the
time scores well on pass@1 and badly here, which is what matters for unattended work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiassist.agent.runs import RunInfo
from aiassist.agent.runtime import Runtime
from aiassist.agent.tools import Risk, ToolContext, ToolError
from aiassist.store.keys import Principal

__all__ = ["EvalError", "Report", "Suite", "TaskReport", "evaluate", "load_suite"]


class EvalError(ValueError):
    pass


class ExpectedCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict, description="A subset to match.")


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)
    expect: dict[str, Any] = Field(description="A subset the read tool's result must contain.")


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["succeeded", "failed", "waiting_approval"] = "succeeded"
    calls: list[ExpectedCall | str] | None = Field(None, max_length=200)
    output_contains: str | None = Field(None, max_length=1000)
    end_state: list[Check] = Field(default_factory=list, max_length=50)

    def expected_calls(self) -> list[ExpectedCall] | None:
        if self.calls is None:
            return None
        return [ExpectedCall(tool=c) if isinstance(c, str) else c for c in self.calls]


class EvalTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    task: str = Field(min_length=1, max_length=20_000)
    tools: list[str] = Field(max_length=200)
    script: list[Any] | None = Field(None, max_length=200, description="Test-model turns.")
    max_steps: int = Field(10, ge=1, le=1000)
    expect: Expectation = Field(default_factory=Expectation)


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(3, ge=1, le=100)
    tasks: list[EvalTask] = Field(min_length=1, max_length=1000)


class TaskReport(BaseModel):
    name: str
    trials: int
    passed: int
    pass_all: bool = Field(description="Every trial passed (this task's contribution to pass^k).")
    tool_call_accuracy: float
    input_tokens: int
    output_tokens: int
    cost: float
    failures: list[str]


class Report(BaseModel):
    k: int
    tasks: list[TaskReport]
    pass_k: float = Field(description="Share of tasks whose k trials all passed.")
    pass_1: float = Field(description="Share of all trials that passed.")
    tool_call_accuracy: float
    input_tokens: int
    output_tokens: int
    cost: float
    run_ids: list[str]


def load_suite(path: str | Path) -> Suite:
    try:
        data = yaml.safe_load(Path(path).read_text())
        return Suite.model_validate(data)
    except OSError as exc:
        raise EvalError(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise EvalError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'suite'}: {e['msg']}" for e in exc.errors()
        )
        raise EvalError(f"{path}: {problems}") from None


def _contains(actual: Any, expected: Any) -> bool:
    """`expected` is a subset of `actual` (recursively for objects, exactly otherwise)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in expected.items()
        )
    return bool(actual == expected)


def call_accuracy(run: RunInfo, expected: list[ExpectedCall]) -> float:
    """Position by position: the share of expected calls made in that place, with those
    arguments, over the longer of the two sequences (extra calls cost as much as missing)."""
    made = run.calls
    if not expected and not made:
        return 1.0
    hits = sum(
        1
        for want, got in zip(expected, made, strict=False)
        if want.tool == got.tool and _contains(got.arguments, want.arguments)
    )
    return hits / max(len(expected), len(made))


async def _end_state(runtime: Runtime, checks: list[Check], run: RunInfo) -> list[str]:
    problems = []
    for check in checks:
        tool = runtime.tools.get(check.tool)
        if tool is None or tool.risk is not Risk.READ:
            problems.append(f"end_state: {check.tool!r} is not a read tool of this service")
            continue
        context = ToolContext(run.id, f"eval-{check.tool}", "", principal="eval")
        try:
            result = await tool.call(tool.check(check.arguments), context)
        except ToolError as exc:
            problems.append(f"end_state: {check.tool} failed: {exc.message}")
            continue
        if hasattr(result, "model_dump"):
            result = result.model_dump(mode="json")
        if not _contains(result, check.expect):
            problems.append(f"end_state: {check.tool} gave {result!r}, expected {check.expect!r}")
    return problems


async def evaluate(
    suite: Suite, runtime: Runtime, *, principal: Principal, k: int | None = None
) -> Report:
    """Run every task `k` times (the suite's k by default) and score the trials."""
    k = k or suite.k
    reports, run_ids = [], []
    for item in suite.tasks:
        passed, accuracy, failures = 0, 0.0, []
        tokens_in = tokens_out = 0
        spent = 0.0
        for trial in range(k):
            run = await runtime.start(
                item.task,
                principal=principal,
                tools=item.tools,
                provider="test" if item.script is not None else None,
                provider_options={"script": item.script} if item.script is not None else None,
                max_steps=item.max_steps,
            )
            run_ids.append(run.id)
            tokens_in += run.input_tokens
            tokens_out += run.output_tokens
            spent += run.cost
            problems = []
            if run.status != item.expect.status:
                problems.append(
                    f"status {run.status} ({run.error or ''}), expected {item.expect.status}"
                )
            expected = item.expect.expected_calls()
            if expected is not None:
                score = call_accuracy(run, expected)
                accuracy += score
                if score < 1:
                    problems.append(
                        f"calls {[c.tool for c in run.calls]}, "
                        f"expected {[c.tool for c in expected]}"
                    )
            else:
                accuracy += 1.0
            wanted = item.expect.output_contains
            if wanted is not None and wanted not in (run.output or ""):
                problems.append(f"output lacks {wanted!r}")
            problems += await _end_state(runtime, item.expect.end_state, run)
            if problems:
                failures.append(f"trial {trial + 1}: " + "; ".join(problems))
            else:
                passed += 1
        reports.append(
            TaskReport(
                name=item.name,
                trials=k,
                passed=passed,
                pass_all=passed == k,
                tool_call_accuracy=accuracy / k,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost=spent,
                failures=failures,
            )
        )
    trials = len(reports) * k
    return Report(
        k=k,
        tasks=reports,
        pass_k=sum(r.pass_all for r in reports) / len(reports),
        pass_1=sum(r.passed for r in reports) / trials,
        tool_call_accuracy=sum(r.tool_call_accuracy for r in reports) / len(reports),
        input_tokens=sum(r.input_tokens for r in reports),
        output_tokens=sum(r.output_tokens for r in reports),
        cost=sum(r.cost for r in reports),
        run_ids=run_ids,
    )
