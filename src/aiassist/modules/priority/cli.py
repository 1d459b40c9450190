"""`aiassist priority simulate`: the comparison `POST /v1/priority/simulate` makes, on this
machine, with the model the volume's `stable` tag names (or the rule fallback)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

__all__ = ["app"]

app = typer.Typer(help="Task priority: simulate a queue under the model.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


@app.command()
def simulate(
    tasks_file: Annotated[
        Path | None,
        typer.Option("--tasks", help="JSON list of your own tasks (SimTask fields).", exists=True),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=128, help="Pool size.")] = 8,
    generate: Annotated[int, typer.Option(min=10, help="Else: tasks to generate.")] = 1000,
    load: Annotated[float, typer.Option(help="Offered load of generated traffic.")] = 0.9,
    seed: Annotated[int, typer.Option(min=0, help="Seed of generated traffic.")] = 0,
) -> None:
    """Run the same tasks under the model, FIFO and static four levels; print the waits."""
    from prometheus_client import CollectorRegistry

    from aiassist.decider import Decider
    from aiassist.metrics import Metrics
    from aiassist.modules.priority import module
    from aiassist.modules.priority.api import SimulateRequest, SimulationSpec, run_simulation
    from aiassist.modules.priority.simulator import SimTask
    from aiassist.registry.serving import ModelWatcher
    from aiassist.settings import SettingsError, load_settings

    try:
        if tasks_file is not None:
            listed = [SimTask.model_validate(t) for t in _json_list(tasks_file)]
            body = SimulateRequest(tasks=listed, workers=workers, show=0)
        else:
            spec = SimulationSpec(tasks=generate, workers=workers, load=load, seed=seed)
            body = SimulateRequest(generate=spec, show=0)
        settings = load_settings()
    except (ValidationError, SettingsError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    decider = Decider([module], metrics=Metrics(CollectorRegistry()))
    ModelWatcher.for_settings(settings, decider).sync()
    result = run_simulation(body, decider)
    served = result.model_version or "the rule fallback"
    console.print(f"{result.tasks} tasks on {result.workers} workers; model: {served}")
    table = Table("ordering", "high mean wait", "mean wait", "misses", "low longest wait")
    for name, row in result.summary.items():
        table.add_row(
            name,
            f"{row.high_mean_wait_s:,.1f} s",
            f"{row.mean_wait_s:,.1f} s",
            f"{row.deadline_miss_pct:.2f}%",
            f"{row.low_max_wait_s:,.0f} s",
        )
    console.print(table)


def _json_list(path: Path) -> list[object]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--tasks: cannot read {path}: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"--tasks: {path} must hold a JSON list of tasks")
    return data
