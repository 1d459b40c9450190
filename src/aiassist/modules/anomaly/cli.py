"""`aiassist anomaly tail FILE`: follow a log file and print its anomalous windows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from aiassist.modules.anomaly.detector import LogDetector, ScoredWindow

__all__ = ["app"]

app = typer.Typer(help="Log anomalies: templates, windows, root-cause hints.", no_args_is_help=True)
console = Console()


def _show(window: ScoredWindow) -> None:
    console.print(
        f"[red]anomaly[/red] lines {window.first_line}-{window.first_line + window.lines - 1}"
        f" score {window.decision.score:.2f} ({window.decision.source})"
    )
    for hint in window.decision.hints:
        console.print(f"  {hint.kind}: {hint.name}  (surprise {hint.surprise:g})")
        if hint.evidence:
            console.print(f"    {hint.evidence}", markup=False, highlight=False)


@app.command()
def tail(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The log file.")],
    from_start: Annotated[
        bool, typer.Option(help="Read the file from its start, not only what is appended.")
    ] = False,
    follow: Annotated[bool, typer.Option(help="Keep following what is appended.")] = True,
    state: Annotated[
        Path | None, typer.Option(help="Templates and baseline kept here across runs.")
    ] = None,
) -> None:
    """Score a log's windows as they are written, printing the anomalous ones with hints."""
    detector = LogDetector(state_dir=state)
    with path.open("rb") as f:
        if not from_start:
            f.seek(0, 2)
        try:
            while True:
                raw = f.readline()
                if not raw:
                    if not follow:
                        break
                    time.sleep(0.2)  # a file has no event for "appended"; poll it
                    continue
                scored = detector.feed(raw)
                if scored is not None and scored.alert:
                    _show(scored)
        except KeyboardInterrupt:
            pass
    console.print(
        f"{detector.good_lines} lines, {detector.bad_lines} bad, "
        f"{len(detector.templates)} templates"
    )
