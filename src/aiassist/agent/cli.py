"""`aiassist agent run|show|approvals|approve|reject|resume`, `aiassist flow list|run|validate`,
`aiassist audit verify` and `aiassist eval`: the agent from a terminal, acting directly on the
configured database.

The CLI acts as the service identity `cli` (every scope): whoever can run it can read the
database anyway. Its tools, policy and provider come from the same settings as the service.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aiassist.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from aiassist.store.audit import AuditLog

__all__ = ["register"]

agent_app = typer.Typer(help="Agent runs and approvals.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
flow_app = typer.Typer(help="Flows: list them with their ROI, validate, run.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the agent's commands to the `aiassist` command."""
    app.add_typer(agent_app, name="agent")
    app.add_typer(audit_app, name="audit")
    app.add_typer(flow_app, name="flow")
    app.command("eval")(evaluate)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _runtime() -> Any:
    from aiassist.agent.assembly import build_runtime
    from aiassist.store.db import make_engine, make_sessionmaker

    settings = _settings()
    try:
        return build_runtime(
            settings, make_sessionmaker(make_engine(settings.resolved_database_url))
        )
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _principal() -> Any:
    from aiassist.agent.policy import service_identity
    from aiassist.store.keys import SCOPES

    return service_identity("cli", SCOPES)


def _print(model: Any) -> None:
    out.print_json(model.model_dump_json())


@agent_app.command("run")
def run(
    task: Annotated[str, typer.Argument(help="What to do, in words.")],
    tool: Annotated[list[str], typer.Option("--tool", "-t", help="A tool the run may use.")],
    script: Annotated[
        Path | None, typer.Option(help="JSON file of test-model turns (a dry run).")
    ] = None,
    max_steps: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Run reads, simulate writes, ask no approvals.")
    ] = False,
) -> None:
    """Start a run and drive it until it finishes or waits for an approval."""
    from aiassist.agent.runtime import NoProvider

    runtime = _runtime()
    options = None
    if script is not None:
        try:
            options = {"script": json.loads(script.read_text())}
        except (OSError, ValueError) as exc:
            err.print(f"[red]--script: {exc}[/red]")
            raise typer.Exit(2) from None
    try:
        info = asyncio.run(
            runtime.start(
                task,
                principal=_principal(),
                tools=tool,
                provider="test" if options is not None else None,
                provider_options=options,
                max_steps=max_steps,
                dry_run=dry_run,
            )
        )
    except (NoProvider, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    _print(info)
    raise typer.Exit(0 if info.status in ("succeeded", "waiting_approval") else 1)


@agent_app.command("show")
def show(run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """A run: status, calls with their results, usage and cost."""
    from aiassist.agent.runs import RunNotFound

    try:
        _print(_runtime().store.info(run_id))
    except RunNotFound:
        err.print(f"[red]no run {run_id}[/red]")
        raise typer.Exit(1) from None


@agent_app.command("approvals")
def approvals(
    as_json: Annotated[bool, typer.Option("--json", help="JSON, one approval a line.")] = False,
) -> None:
    """Calls waiting for a person."""
    pending = _runtime().store.approvals()
    if as_json:
        for a in pending:
            print(a.model_dump_json())
        return
    table = Table("id", "run", "tool", "arguments", "reason")
    for a in pending:
        table.add_row(a.id, a.run_id, a.tool, json.dumps(a.arguments), a.reason)
    out.print(table)


def _decide(approval_id: str, approve: bool, arguments: str | None, message: str | None) -> None:
    from aiassist.agent.approvals import ApprovalConflict
    from aiassist.agent.runs import RunNotFound
    from aiassist.agent.runtime import NoProvider

    runtime = _runtime()
    edited = None
    if arguments is not None:
        try:
            edited = json.loads(arguments)
        except ValueError as exc:
            err.print(f"[red]--arguments is not JSON: {exc}[/red]")
            raise typer.Exit(2) from None

    async def decide() -> Any:
        approval = await runtime.decide(
            approval_id, by=_principal(), approve=approve, arguments=edited, message=message
        )
        try:
            return await runtime.drive(approval.run_id)
        except NoProvider as exc:  # e.g. its flow is loaded by the service, not this shell
            err.print(
                f"{'approved' if approve else 'rejected'}; the run goes on in the service, "
                f"within AIASSIST_AGENT_RECOVER_SECONDS (not from here: {exc})"
            )
            return await runtime.info(approval.run_id)

    try:
        info = asyncio.run(decide())
    except RunNotFound:
        err.print(f"[red]no approval {approval_id}[/red]")
        raise typer.Exit(1) from None
    except (ApprovalConflict, NoProvider) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _print(info)


@agent_app.command("approve")
def approve(
    approval_id: Annotated[str, typer.Argument(help="The approval's id (= the call's).")],
    arguments: Annotated[
        str | None, typer.Option(help="Approve with these JSON arguments instead.")
    ] = None,
) -> None:
    """Approve a paused call (optionally with edited arguments); the run goes on."""
    _decide(approval_id, True, arguments, None)


@agent_app.command("reject")
def reject(
    approval_id: Annotated[str, typer.Argument(help="The approval's id (= the call's).")],
    message: Annotated[str, typer.Option(help="Why; the model is told.")] = "",
) -> None:
    """Reject a paused call; the model receives the rejection as the call's result."""
    _decide(approval_id, False, None, message)


@agent_app.command("resume")
def resume() -> None:
    """Resume the runs whose process died (their lease expired)."""
    resumed = asyncio.run(_runtime().recover())
    out.print(f"resumed {len(resumed)} run(s)")


def _audit_log() -> AuditLog:
    from aiassist.store.audit import AuditLog
    from aiassist.store.db import make_engine, make_sessionmaker

    return AuditLog(make_sessionmaker(make_engine(_settings().resolved_database_url)))


@audit_app.command("verify")
def verify() -> None:
    """Walk every hash chain and check the anchors; exit 1 naming what was edited or removed."""
    check = _audit_log().verify()
    if check.ok:
        out.print(f"ok: {check.events} events in {check.chains} chains, all intact")
        return
    where = f" at event {check.first_bad_id}" if check.first_bad_id is not None else ""
    err.print(f"[red]audit trail broken{where}: {check.reason}[/red]")
    raise typer.Exit(1)


@audit_app.command("anchor")
def anchor() -> None:
    """Record the head of every chain that grew since the last anchor (the service does this
    every AIASSIST_AUDIT_ANCHOR_SECONDS), so a run deleted whole is detected."""
    grown = _audit_log().anchor()
    out.print(f"anchored {grown} chain(s)")


def evaluate(
    suite: Annotated[Path, typer.Argument(help="The task suite (YAML).")],
    k: Annotated[int | None, typer.Option(min=1, max=100, help="Trials per task.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """Run a task suite k times: pass^k, tool-call accuracy, tokens and cost."""
    from aiassist.agent.eval import EvalError, evaluate, load_suite
    from aiassist.agent.runtime import NoProvider

    try:
        parsed = load_suite(suite)
        report = asyncio.run(evaluate(parsed, _runtime(), principal=_principal(), k=k))
    except (EvalError, NoProvider, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    table = Table("task", "passed", "pass^k", "call accuracy", "tokens", "cost")
    for t in report.tasks:
        table.add_row(
            t.name,
            f"{t.passed}/{t.trials}",
            "yes" if t.pass_all else "no",
            f"{t.tool_call_accuracy:.2f}",
            str(t.input_tokens + t.output_tokens),
            f"{t.cost:.6f}",
        )
    out.print(table)
    out.print(
        f"pass^{report.k} {report.pass_k:.2f}  pass@1 {report.pass_1:.2f}  "
        f"tool-call accuracy {report.tool_call_accuracy:.2f}  "
        f"tokens {report.input_tokens}+{report.output_tokens}  cost {report.cost:.6f}"
    )
    for t in report.tasks:
        for failure in t.failures:
            out.print(f"  {t.name}: {failure}")
    if json_out is not None:
        json_out.write_text(report.model_dump_json(indent=2))


# --- flows ------------------------------------------------------------------------------------
def _automation() -> Any:
    from aiassist.agent.automation import Automation
    from aiassist.agent.flows import FlowError

    settings = _settings()
    if settings.flows_dir is None:
        err.print("[red]no flows: set AIASSIST_FLOWS_DIR to a directory of flow files[/red]")
        raise typer.Exit(2)
    runtime = _runtime()
    try:
        return Automation.from_settings(settings, runtime)
    except (FlowError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@flow_app.command("list")
def flow_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON, one flow a line.")] = False,
) -> None:
    """The flows with their triggers and ROI (runs, success rate, minutes saved)."""
    reports = asyncio.run(_automation().reports())
    if as_json:
        for r in reports:
            print(r.model_dump_json())
        return
    table = Table("flow", "steps", "triggers", "runs", "success", "errors caught", "min saved")
    for r in reports:
        rate = "-" if r.roi.success_rate is None else f"{r.roi.success_rate:.0%}"
        triggers = ", ".join(f"{k}: {v}" for t in r.triggers for k, v in t.items() if k != "input")
        table.add_row(
            r.name,
            str(len(r.steps)),
            triggers or "-",
            str(r.roi.runs),
            rate,
            str(r.roi.errors_caught),
            f"{r.roi.minutes_saved:g}",
        )
    out.print(table)


@flow_app.command("validate")
def flow_validate(
    files: Annotated[list[Path], typer.Argument(help="Flow files to check.")],
) -> None:
    """Check flow files; every problem is printed as file:line: message."""
    from aiassist.agent.flows import FlowError, load_flow

    bad = False
    for path in files:
        try:
            flow = load_flow(path)
        except FlowError as exc:  # plain lines, unwrapped: file:line: message
            bad = True
            typer.echo(str(exc), err=True)
        except OSError as exc:
            bad = True
            typer.echo(f"{path}: {exc.strerror}", err=True)
        else:
            out.print(f"{path}: ok ({flow.name}: {len(flow.steps)} steps, tools {flow.tools})")
    raise typer.Exit(1 if bad else 0)


@flow_app.command("run")
def flow_run(
    name: Annotated[str, typer.Argument(help="The flow's name.")],
    input: Annotated[str, typer.Option("--input", "-i", help="The input, a JSON object.")] = "{}",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Run reads, simulate writes, ask no approvals.")
    ] = False,
    key: Annotated[
        str | None, typer.Option(help="Idempotency key: a second run with it starts nothing.")
    ] = None,
) -> None:
    """Run a flow until it ends or waits for an approval; prints the run."""
    from aiassist.agent.runtime import NoProvider

    try:
        data = json.loads(input)
    except ValueError as exc:
        err.print(f"[red]--input: {exc}[/red]")
        raise typer.Exit(2) from None
    if not isinstance(data, dict):
        err.print("[red]--input: expected a JSON object[/red]")
        raise typer.Exit(2)
    automation = _automation()
    try:
        info = asyncio.run(
            automation.run(name, data, principal=_principal(), key=key, dry_run=dry_run)
        )
    except LookupError as exc:
        err.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(2) from None
    except (NoProvider, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    _print(info)
    raise typer.Exit(0 if info.status in ("succeeded", "waiting_approval", "waiting_until") else 1)
