"""`aiassist anomaly tail FILE`: follow a log file and print its anomalous windows.
`aiassist anomaly scrape URL`: scrape a /metrics endpoint and print its anomalous series."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.text import Text

from aiassist.modules.anomaly import module
from aiassist.modules.anomaly.alerts import WindowAlerts
from aiassist.modules.anomaly.detector import LogDetector, ScoredWindow
from aiassist.modules.anomaly.exposition import ExpositionError, parse_exposition
from aiassist.modules.anomaly.series import SeriesAnomaly, SeriesScorer, rank

__all__ = ["app"]

app = typer.Typer(help="Log anomalies: templates, windows, root-cause hints.", no_args_is_help=True)
console = Console()


def _show(window: ScoredWindow) -> None:
    console.print(
        f"[red]anomaly[/red] lines {window.first_line}-{window.first_line + window.lines - 1}"
        f" score {window.decision.score:.2f} ({window.decision.source})"
    )
    for hint in window.decision.hints:
        where = f", from line {window.first_line + hint.line - 1}" if hint.line else ""
        console.print(f"  {hint.kind}: {hint.name}  (surprise {hint.surprise:g}{where})")
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
    """Score a log's windows as they are written, printing the anomalous ones with hints
    (and POSTing them to AIASSIST_ANOMALY_WEBHOOK_URL when it is set)."""
    alerts = WindowAlerts.configured(module.config)
    detector = LogDetector(state_dir=state, source=path.name, on_alert=alerts)
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
    if alerts is not None:
        alerts.close()  # deliver what is queued before exiting
    console.print(
        f"{detector.good_lines} lines, {detector.bad_lines} bad, "
        f"{len(detector.templates)} templates"
    )


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: Samples one scrape may hold.
MAX_SCRAPE_SAMPLES = 100_000


def _seconds(text: str) -> float:
    """'15s', '500ms', '1m', '2h' or plain seconds, between 10 ms and a day."""
    found = _DURATION.match(text.strip())
    if found is None:
        raise typer.BadParameter(f"{text!r} is not a duration such as 15s, 500ms or 1m")
    seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2) or "s"]
    if not 0.01 <= seconds <= 86_400:
        raise typer.BadParameter("between 10ms and 24h")
    return seconds


def _show_series(anomaly: SeriesAnomaly, value: float, expected: float) -> None:
    console.print(
        Text.assemble(
            ("anomaly", "red"),
            f" {anomaly.reason} ",
            (anomaly.series, "bold"),
            f"  value {value:.4g}, expected {expected:.4g}, z {anomaly.z:+.1f},"
            f" score {anomaly.score:.2f} ({anomaly.detector})",
        ),
        soft_wrap=True,
    )


@app.command()
def scrape(
    url: Annotated[str, typer.Argument(help="A Prometheus /metrics endpoint (text format).")],
    every: Annotated[
        str, typer.Option(help="Time between scrapes: 15s, 500ms, 1m.", callback=_seconds)
    ] = "15s",
    once: Annotated[bool, typer.Option(help="Scrape once and stop.")] = False,
    count: Annotated[
        int, typer.Option(min=0, help="Stop after this many scrapes (0: until interrupted).")
    ] = 0,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=300, help="Seconds a scrape may take.")
    ] = 10,
    state: Annotated[
        Path | None, typer.Option(help="The series' baselines kept here across runs.")
    ] = None,
) -> None:
    """Score every series of an endpoint at each scrape, printing the anomalous ones: the
    series that changed first leading, then by how much."""
    interval = float(every)  # the callback made seconds of it
    scorer = SeriesScorer(module.config, state_dir=state)
    scrapes = 1 if once else count
    done = failed = 0
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        try:
            while True:
                started = time.monotonic()
                try:
                    answer = client.get(url, headers={"accept": "text/plain"})
                    answer.raise_for_status()
                    samples, _ = parse_exposition(answer.text, MAX_SCRAPE_SAMPLES)
                except (httpx.HTTPError, ExpositionError) as exc:
                    failed += 1
                    console.print(f"[red]scrape failed[/red]: {exc}", highlight=False)
                else:
                    scored = scorer.score(samples, now=time.time())
                    anomalies = rank(scored.scores)
                    values = {s.series: (s.value, s.expected) for s in scored.scores}
                    console.print(
                        f"scrape {done + 1}: {len(scored.scores)} samples scored, "
                        f"{len(scorer)} series, {len(anomalies)} anomalous"
                    )
                    for anomaly in anomalies:
                        _show_series(anomaly, *values[anomaly.series])
                done += 1
                if scrapes and done >= scrapes:
                    break
                time.sleep(max(0.0, interval - (time.monotonic() - started)))  # the next scrape
        except KeyboardInterrupt:
            pass
    if failed and failed == done:  # not one scrape answered
        raise typer.Exit(1)


@app.command()
def report(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The log file.")],
    out: Annotated[
        Path, typer.Option(help="The report: .html (one file) or .md (+ .svg chart).")
    ] = Path("anomaly-report.html"),
    state: Annotated[
        Path | None, typer.Option(help="Templates and baseline kept here across runs.")
    ] = None,
) -> None:
    """Score a whole log file and write a report: the score of every window on a chart, and
    each alerting window with its root-cause hints."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        console.print("[red]the report's chart needs matplotlib[/red]: pip install matplotlib")
        raise typer.Exit(2) from None
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from aiassist.modules.anomaly.report import Scan, write_report

    detector = LogDetector(state_dir=state)
    scan = Scan(source=path.name, threshold=detector.settings.threshold)
    columns = (
        *Progress.get_default_columns()[:1],
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress, path.open("rb") as f:
        task = progress.add_task("scoring", total=path.stat().st_size)
        for raw in f:
            if (scored := detector.feed(raw)) is not None:
                scan.windows.append(scored)
            progress.advance(task, len(raw))
    scan.good_lines, scan.bad_lines = detector.good_lines, detector.bad_lines
    scan.templates = len(detector.templates)
    written = write_report(scan, out)
    console.print(
        f"{scan.good_lines} lines, {scan.bad_lines} bad, {len(scan.windows)} windows, "
        f"{len(scan.alerts)} alerts; report: " + ", ".join(str(p) for p in written)
    )
