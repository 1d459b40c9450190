"""`aiassist bot replay access.log`: score an existing access log offline and write a
report, with the model the volume's `stable` tag names (or the rule fallback)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["app"]

app = typer.Typer(help="Bot scoring: replay an access log.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


@app.command()
def replay(
    log: Annotated[
        Path, typer.Argument(help="An Apache/Nginx access log in combined format.", exists=True)
    ],
    report: Annotated[Path | None, typer.Option(help="Where to write the Markdown report.")] = None,
    top: Annotated[int, typer.Option(min=0, max=10_000, help="Sessions listed.")] = 20,
) -> None:
    """Fold the log into sessions, score each, print the bands and write the report."""
    from prometheus_client import CollectorRegistry
    from pydantic import ValidationError
    from rich.progress import open as progress_open

    from aiassist.decider import Decider
    from aiassist.metrics import Metrics
    from aiassist.modules.bot import BotDecision, BotFeatures, module
    from aiassist.modules.bot.replay import replay as run_replay
    from aiassist.modules.bot.report import markdown
    from aiassist.registry.serving import ModelWatcher
    from aiassist.settings import SettingsError, load_settings

    try:
        settings = load_settings()
        config = module.config
    except (ValidationError, SettingsError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    decider = Decider([module], metrics=Metrics(CollectorRegistry()))
    ModelWatcher.for_settings(settings, decider).sync()

    def decide(batch: list[BotFeatures]) -> list[BotDecision]:
        return cast(list[BotDecision], decider.decide_many(module.name, batch))

    with progress_open(log, "r", encoding="utf-8", errors="replace", description="reading") as f:
        result = run_replay(
            f,
            decide,
            idle_s=config.session_idle_s,
            window_s=config.session_window_s,
            login_paths=frozenset(config.login_paths),
        )
    version = decider.served_version(module.name)
    answered_by = f"model {version}" if version else "the rule fallback (no model)"
    table = Table("band", "sessions", "requests")
    for band, (n, requests) in result.band_counts().items():
        table.add_row(band, f"{n:,}", f"{requests:,}")
    console.print(
        f"{result.lines:,} lines ({result.skipped:,} skipped), "
        f"{len(result.sessions):,} sessions; scored by {answered_by}"
    )
    console.print(table)
    if report is not None:
        report.write_text(markdown(result, source=log.name, answered_by=answered_by, top=top))
        console.print(f"report: {report}")
