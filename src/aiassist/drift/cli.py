"""`aiassist drift`: inspect drift incidents and version switches, acknowledge, roll back
and roll forward, on the database named by AIASSIST_DATABASE_URL (actor `cli`, audited).
Backends follow a change within their guard's `refresh_seconds`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aiassist.drift.store import DriftError, DriftStore, incident_json

__all__ = ["app"]

app = typer.Typer(help="API drift guard: incidents and version switches.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _store() -> DriftStore:
    from aiassist.settings import SettingsError, load_settings
    from aiassist.store.db import make_engine, make_sessionmaker

    try:
        settings = load_settings()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    return DriftStore(make_sessionmaker(make_engine(settings.resolved_database_url)))


def _fail(exc: DriftError) -> typer.Exit:
    err.print(f"[red]{exc}[/red]")
    return typer.Exit(1 if exc.code != "invalid" else 2)


@app.command("list")
def list_incidents(
    status: Annotated[
        str | None, typer.Option(help="open, acknowledged or resolved (default: all).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Incidents (newest first) and the versions switched now."""
    if status not in (None, "open", "acknowledged", "resolved"):
        err.print("[red]--status must be open, acknowledged or resolved[/red]")
        raise typer.Exit(2)
    store = _store()
    table = Table("id", "detected", "endpoint", "version", "severity", "status", "action", "why")
    for row in store.incidents(status, None, limit):  # type: ignore[arg-type]
        table.add_row(
            str(row.id),
            f"{row.detected_at:%Y-%m-%d %H:%M:%S}",
            row.endpoint,
            row.version,
            row.severity,
            row.status,
            row.action,
            row.explanation,
        )
    console.print(table)
    routes = Table("version", "served by", "since", "by", "incident")
    for route in store.routes():
        routes.add_row(
            route.version,
            route.target,
            f"{route.since:%Y-%m-%d %H:%M:%S}",
            route.actor,
            str(route.incident_id or ""),
        )
    console.print(routes)


@app.command("show")
def show(incident_id: Annotated[int, typer.Argument(min=1)]) -> None:
    """One incident with its evidence, as JSON."""
    try:
        row = _store().incident(incident_id)
    except DriftError as exc:
        raise _fail(exc) from None
    import json

    console.print_json(json.dumps(incident_json(row), default=str))


@app.command("ack")
def ack(
    incident_id: Annotated[int, typer.Argument(min=1)],
    note: Annotated[str, typer.Option(max=500)] = "",
) -> None:
    """Acknowledge an open incident (the switch stays)."""
    try:
        _store().acknowledge(incident_id, actor="cli", note=note[:500])
    except DriftError as exc:
        raise _fail(exc) from None
    console.print(f"incident {incident_id} acknowledged")


@app.command("rollback")
def rollback(
    version: str,
    to: Annotated[str, typer.Option(help="The version to serve it with.")],
    reason: Annotated[str, typer.Option()] = "",
) -> None:
    """Serve VERSION's requests with another version, by hand."""
    try:
        _store().rollback(version, to, actor="cli", reason=reason[:500])
    except DriftError as exc:
        raise _fail(exc) from None
    console.print(f"{version} -> {to}")


@app.command("roll-forward")
def roll_forward(
    version: str,
    accept: Annotated[
        bool, typer.Option(help="Take the incidents' fields as an intended change.")
    ] = False,
    reason: Annotated[str, typer.Option()] = "",
) -> None:
    """Serve VERSION by itself again and resolve its incidents."""
    try:
        route, resolved = _store().roll_forward(
            version, actor="cli", accept=accept, reason=reason[:500]
        )
    except DriftError as exc:
        raise _fail(exc) from None
    was = f" (was served by {route.target})" if route else ""
    console.print(f"{version} serves itself again{was}; resolved incidents: {resolved or 'none'}")
