"""`aiassist tickets order`: the order `POST /v1/tickets/order` answers, on this machine, with
the model the volume's `stable` tag names (or the rule fallback) and the SLA figures of the
outcomes in the configured database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

__all__ = ["app"]

app = typer.Typer(help="Tickets: order open tickets.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


@app.command()
def order(
    tickets_file: Annotated[
        Path, typer.Argument(help="JSON list of open tickets (the features plus `id`).")
    ],
    agents: Annotated[int, typer.Option(min=1, max=10_000, help="Agents working them.")] = 1,
) -> None:
    """Print the open tickets in the order to take them, with queue, work and SLA."""
    from datetime import UTC, datetime

    from prometheus_client import CollectorRegistry

    from aiassist.decider import Decider
    from aiassist.metrics import Metrics
    from aiassist.modules.tickets import TicketsSettings, module
    from aiassist.modules.tickets.api import OrderRequest, RecordedSla, order_tickets
    from aiassist.registry.serving import ModelWatcher
    from aiassist.settings import SettingsError, load_settings, read_settings
    from aiassist.store.db import make_engine

    try:
        listed = json.loads(tickets_file.read_text())
        body = OrderRequest(tickets=listed, agents=agents, record=False)
        settings = load_settings()
        window_days = read_settings(TicketsSettings).sla_window_days
    except (OSError, json.JSONDecodeError, ValidationError, SettingsError) as exc:
        err.print(f"[red]{tickets_file}: {exc}[/red]")
        raise typer.Exit(2) from None
    decider = Decider([module], metrics=Metrics(CollectorRegistry()))
    ModelWatcher.for_settings(settings, decider).sync()
    recorded = RecordedSla(window_days * 86_400.0)
    engine = make_engine(settings.resolved_database_url)
    try:
        recorded.refresh(engine)
    except Exception as exc:  # no database yet: no SLA figures, the order still stands
        err.print(f"[yellow]no recorded outcomes read: {type(exc).__name__}[/yellow]")
    finally:
        engine.dispose()
    result = order_tickets(body, decider, recorded.window, datetime.now(UTC).timestamp())
    console.print(f"{len(result.tickets)} tickets, {agents} agents; {result.served_by}")
    table = Table("rank", "id", "queue", "category", "work", "starts in", "SLA")
    for t in result.tickets:
        d = t.decision
        sla = "none" if t.breach_expected is None else ("breach" if t.breach_expected else "ok")
        table.add_row(str(t.rank), t.id, d.queue, d.category, f"{d.est_handling_s:,.0f} s",
                      f"{t.starts_in_s:,.0f} s", sla)  # fmt: skip
    console.print(table)
