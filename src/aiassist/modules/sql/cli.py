"""`aiassist sql analyze` and `aiassist sql watch`: slow queries, index advice, regressions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aiassist.modules.sql.findings import PATTERNS, Analysis
from aiassist.modules.sql.settings import SqlSettings

if TYPE_CHECKING:
    from aiassist.settings import Settings

__all__ = ["app"]

WATCH_STATE = "sql-watch.json"  # in the data directory

app = typer.Typer(help="PostgreSQL slow queries and indexes.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


@app.command()
def analyze(
    dsn: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL URL to read (a replica; read-only rights are enough).",
            envvar="AIASSIST_SQL_DSN",
            show_envvar=True,
        ),
    ] = None,
    log: Annotated[
        Path | None, typer.Option(help="A server log with log_min_duration_statement lines.")
    ] = None,
    queries: Annotated[
        Path | None, typer.Option(help="A file of SQL statements separated by semicolons.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write a report: .html (one file) or .md (+ .svg).")
    ] = None,
    top_groups: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="Query groups to explain.")
    ] = None,
    min_cost_factor: Annotated[
        float | None, typer.Option(min=1.1, max=1000, help="Advise when the cost falls this much.")
    ] = None,
    explain_analyze: Annotated[
        bool | None,
        typer.Option("--analyze/--no-analyze", help="EXPLAIN ANALYZE (runs the queries)."),
    ] = None,
    track: Annotated[
        bool,
        typer.Option(
            help="Record the decisions, and have `aiassist sql watch` time the "
            "advised indexes once created (their outcomes)."
        ),
    ] = False,
) -> None:
    """Group the statements, explain the costly ones, name index-defeating patterns and
    advise indexes proven with HypoPG. Without --log or --queries: pg_stat_statements."""
    from rich.progress import Progress

    from aiassist.modules.sql import IndexDecision, IndexFeatures, module
    from aiassist.modules.sql.analysis import analyze as run_analysis
    from aiassist.modules.sql.analysis import connect
    from aiassist.modules.sql.report import write_report
    from aiassist.modules.sql.sources import (
        SourceError,
        from_log,
        from_pg_stat_statements,
        from_queries,
    )
    from aiassist.modules.sql.watch import WatchState
    from aiassist.sdk import AIAssistService

    if log is not None and queries is not None:
        err.print("[red]give --log or --queries, not both[/red]")
        raise typer.Exit(2)
    settings, config, url = _configured(
        dsn, top_groups=top_groups, min_cost_factor=min_cost_factor, allow_analyze=explain_analyze
    )
    service = AIAssistService.setup(settings)  # the model on the volume, or the rule

    def judge(features: IndexFeatures) -> IndexDecision:
        return service.decide(module, features, record=track)

    try:
        if log is not None:
            with log.open(encoding="utf-8", errors="replace") as f:
                statements, source = from_log(f), str(log)
        elif queries is not None:
            statements, source = from_queries(queries.read_text(encoding="utf-8")), str(queries)
        else:
            statements, source = [], "pg_stat_statements"
        with connect(url, config) as conn:
            if log is None and queries is None:
                statements = from_pg_stat_statements(conn)
            with Progress(console=err, transient=True) as progress:
                task = progress.add_task("explaining", total=None)
                result = run_analysis(
                    conn, statements, settings=config, source=source, judge=judge,
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )  # fmt: skip
    except OSError as exc:
        err.print(f"[red]cannot read {exc.filename}: {exc.strerror}[/red]")
        raise typer.Exit(2) from None
    except SourceError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    _print(result)
    if track:
        path = settings.data_dir / WATCH_STATE
        state = WatchState.load(path)
        added = state.track(result.recommendations)
        state.save(path)
        console.print(f"tracking {added} advised indexes for `aiassist sql watch` ({path})")
    if report is not None:
        written = write_report(result, report)
        console.print("report: " + ", ".join(str(p) for p in written))
    service.close()  # the decisions recorded are written


def _configured(dsn: str | None, **overrides: Any) -> tuple[Settings, SqlSettings, str]:
    """The settings, the module's (with the options given), and the database URL; a clear
    error and exit 2 when they are wrong or no database is named."""
    from pydantic import ValidationError

    from aiassist.modules.sql import module
    from aiassist.settings import SettingsError, load_settings

    try:
        settings = load_settings()
        given = {k: v for k, v in overrides.items() if v is not None}
        config = module.config.model_copy(update=given)
    except (ValidationError, SettingsError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    url = dsn or (config.dsn.get_secret_value() if config.dsn else None)
    if not url:
        err.print("[red]no database: pass --dsn or set AIASSIST_SQL_DSN[/red]")
        raise typer.Exit(2)
    return settings, config, url


def _print(result: Analysis) -> None:
    console.print(
        f"{result.database}: {result.statements:,} statements, {result.groups:,} groups, "
        f"{result.explained:,} explained in {result.elapsed_s:.1f} s"
        + ("" if result.hypopg else " [yellow](HypoPG not installed: indexes not costed)[/yellow]")
    )
    groups = Table("#", "time", "calls", "mean ms", "reads whole", "query", title="Query groups")
    for i, g in enumerate(result.query_groups[:15], 1):
        scans = ", ".join(g.seq_scans) or (g.error or "")
        groups.add_row(
            str(i), f"{g.time_share:.1%}", f"{g.calls:,}", f"{g.mean_ms:,.2f}", scans,
            " ".join(g.query.split())[:80],
        )  # fmt: skip
    console.print(groups)
    findings = Table("pattern", "table", "columns", "what", title="Findings")
    for f in result.findings:
        findings.add_row(PATTERNS[f.pattern], f.table, ", ".join(f.columns), f.message)
    console.print(findings)
    advice = Table("index", "cost before", "after", "factor", "advised", title="Indexes")
    for r in result.recommendations:
        advice.add_row(
            r.statement, f"{r.cost_before:,.0f}", f"{r.cost_after:,.0f}", f"{r.factor:,.1f}x",
            "yes" if r.advised else f"no: {r.explanation}",
        )  # fmt: skip
    console.print(advice)


@app.command()
def watch(
    dsn: Annotated[
        str | None,
        typer.Option(help="PostgreSQL URL (with pg_stat_statements).", envvar="AIASSIST_SQL_DSN"),
    ] = None,
    state: Annotated[
        Path | None, typer.Option(help="Where the baselines are kept (default: the data dir).")
    ] = None,
    once: Annotated[bool, typer.Option(help="One pass, then exit.")] = False,
) -> None:
    """Alert (AIASSIST_SQL_WEBHOOK_URL, signed) when a query group's mean time regresses
    against its baseline, or a new one takes a large share of the time."""
    import signal
    import threading

    from aiassist.drift.alerts import WebhookAlerter
    from aiassist.modules.sql import module
    from aiassist.modules.sql.analysis import connect
    from aiassist.modules.sql.sources import SourceError
    from aiassist.modules.sql.watch import Watch
    from aiassist.sdk import AIAssistService

    settings, config, url = _configured(dsn)
    service = AIAssistService.setup(settings)  # where the advised indexes' outcomes go
    secret = config.webhook_secret.get_secret_value() if config.webhook_secret else None
    sender = WebhookAlerter(config.webhook_url, secret=secret) if config.webhook_url else None
    stop = threading.Event()
    if not once:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with connect(url, config) as conn:
            watcher = Watch(
                conn, state or settings.data_dir / WATCH_STATE, sender,
                factor=config.watch_factor, min_calls=config.watch_min_calls,
                record=lambda decision, outcome: service.record_outcome(module, decision, outcome),
            )  # fmt: skip
            while True:
                for alert in watcher.check():
                    console.print(
                        f"[yellow]{alert.event}[/yellow] {alert.mean_ms:,.1f} ms "
                        f"(baseline {alert.baseline_ms}) {' '.join(alert.query.split())[:100]}"
                    )
                if once or stop.wait(config.watch_interval_s):
                    break
    except SourceError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        service.close()  # the outcomes recorded are written
        if sender is not None:
            sender.close()
