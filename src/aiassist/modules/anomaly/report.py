"""A log's anomalies as a report: the score of every window on a chart (where people would
rather look than read), and each alerting window with its root-cause hints and evidence.

One HTML file (the chart inline as SVG), or Markdown with the chart beside it.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiassist.charts import svg_chart
from aiassist.modules.anomaly.detector import ScoredWindow

__all__ = ["Scan", "score_chart_svg", "write_report"]

LISTED_ALERTS = 50


@dataclass
class Scan:
    """What scoring one log file found."""

    source: str
    threshold: float
    windows: list[ScoredWindow] = field(default_factory=list)
    good_lines: int = 0
    bad_lines: int = 0
    templates: int = 0

    @property
    def alerts(self) -> list[ScoredWindow]:
        return [w for w in self.windows if w.alert]

    def causes(self, top: int = 10) -> list[tuple[str, str, int]]:
        """The hints that lead alerts most often: (kind, name, alerts it led)."""
        found = Counter(
            (w.decision.hints[0].kind, w.decision.hints[0].name)
            for w in self.alerts
            if w.decision.hints
        )
        return [(kind, name, n) for (kind, name), n in found.most_common(top)]


def score_chart_svg(scan: Scan) -> str:
    """Anomaly score per window along the log, the threshold, alerts in red (SVG text)."""

    def draw(axes: Any) -> None:
        starts = [w.first_line for w in scan.windows]
        axes.plot(starts, [w.decision.score for w in scan.windows], color="#3b6ea8",
                  linewidth=1, label="window score")  # fmt: skip
        if warm := [w.first_line for w in scan.windows if w.warming_up]:
            axes.axvspan(min(warm), max(warm), color="#dddddd", label="learning the log")
        alerts = scan.alerts
        axes.scatter([w.first_line for w in alerts], [w.decision.score for w in alerts],
                     color="#c0392b", zorder=3, s=18, label=f"alert ({len(alerts)})")  # fmt: skip
        axes.axhline(scan.threshold, color="#c0392b", linestyle="--", linewidth=0.8)
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("line of the log (window start)")
        axes.set_ylabel("anomaly score")
        axes.set_title(f"Anomaly score per window: {scan.source}")
        axes.legend(loc="upper right", fontsize=8)

    return svg_chart(draw, (10, 3.2))


def write_report(scan: Scan, path: Path) -> list[Path]:
    """Writes `path` (.html: one file; otherwise Markdown and `<stem>.svg`); the files."""
    if path.suffix.lower() in (".html", ".htm"):
        path.write_text(_html(scan), encoding="utf-8")
        return [path]
    chart = path.with_suffix(".svg")
    chart.write_text(score_chart_svg(scan), encoding="utf-8")
    path.write_text(_markdown(scan, chart.name), encoding="utf-8")
    return [path, chart]


def _summary(scan: Scan) -> str:
    return (
        f"{scan.good_lines:,} lines ({scan.bad_lines:,} bad) in {len(scan.windows):,} windows, "
        f"{scan.templates:,} templates; {len(scan.alerts):,} windows alerted "
        f"(score at or above {scan.threshold:g})."
    )


def _span(window: ScoredWindow) -> str:
    return f"{window.first_line}-{window.first_line + window.lines - 1}"


def _markdown(scan: Scan, chart: str) -> str:
    lines = [f"# Log anomalies of {scan.source}", "", _summary(scan), "", f"![scores]({chart})"]
    if causes := scan.causes():
        lines += [
            "",
            "## What led the alerts",
            "",
            "| hint | name | alerts |",
            "| --- | --- | ---: |",
        ]
        lines += [f"| {kind} | `{_cell(name)}` | {n} |" for kind, name, n in causes]
    lines += ["", f"## Alerts (first {LISTED_ALERTS})", ""]
    for w in scan.alerts[:LISTED_ALERTS]:
        lines.append(f"### Lines {_span(w)}: score {w.decision.score:.2f} ({w.decision.source})")
        lines.append("")
        for h in w.decision.hints:
            at = f", from line {w.first_line + h.line - 1}" if h.line else ""
            lines.append(
                f"- {h.kind} `{_cell(h.name)}` ({h.component}), surprise {h.surprise:g}{at}"
            )
            if h.evidence:
                lines.append(f"  - `{_cell(h.evidence)}`")
        lines.append("")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def _html(scan: Scan) -> str:
    e = html.escape
    causes = "".join(
        f"<tr><td>{e(kind)}</td><td><code>{e(name)}</code></td><td>{n}</td></tr>"
        for kind, name, n in scan.causes()
    )
    alerts = []
    for w in scan.alerts[:LISTED_ALERTS]:
        hints = "".join(
            f"<li>{e(h.kind)} <code>{e(h.name)}</code> ({e(h.component)}), surprise "
            f"{h.surprise:g}"
            + (f", from line {w.first_line + h.line - 1}" if h.line else "")
            + (f"<br><small><code>{e(h.evidence)}</code></small>" if h.evidence else "")
            + "</li>"
            for h in w.decision.hints
        )
        alerts.append(
            f"<h3>Lines {_span(w)}: score {w.decision.score:.2f} ({e(w.decision.source)})</h3>"
            f"<ul>{hints}</ul>"
        )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Log anomalies of {e(scan.source)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;"
        "padding:0 1rem}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:.2rem .5rem;text-align:left}code{font-size:.85em}</style></head><body>"
        f"<h1>Log anomalies of {e(scan.source)}</h1><p>{e(_summary(scan))}</p>"
        f"{score_chart_svg(scan)}"
        + (
            "<h2>What led the alerts</h2><table><tr><th>hint</th><th>name</th>"
            f"<th>alerts</th></tr>{causes}</table>"
            if causes
            else ""
        )
        + f"<h2>Alerts (first {LISTED_ALERTS})</h2>{''.join(alerts) or '<p>None.</p>'}"
        "</body></html>\n"
    )
