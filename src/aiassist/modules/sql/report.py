"""The analysis as a report: Markdown (the chart beside it as SVG) or one HTML file (the
chart inline). The chart is each query group's share of the statements' total time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiassist.charts import svg_chart
from aiassist.modules.sql.findings import PATTERNS, Analysis

__all__ = ["time_share_svg", "write_report"]

CHARTED_GROUPS = 15
LISTED_GROUPS = 30


def time_share_svg(analysis: Analysis) -> str:
    """A horizontal bar chart of the top groups' share of time (matplotlib, SVG text)."""
    rows = [g for g in analysis.query_groups if g.total_ms > 0][:CHARTED_GROUPS]
    labels = [f"#{i} {_short(g.query, 60)}" for i, g in enumerate(rows, 1)]
    shares = [100 * g.time_share for g in rows]

    def draw(axes: Any) -> None:
        axes.barh(labels[::-1], shares[::-1], color="#3b6ea8")
        axes.set_xlabel("share of total statement time (%)")
        axes.set_title(f"Time per query group: {analysis.database}")
        axes.tick_params(axis="y", labelsize=8)
        if not rows:
            axes.text(0.5, 0.5, "no timings in this source", ha="center", transform=axes.transAxes)

    return svg_chart(draw, (9, 0.4 * max(len(rows), 3) + 1))


def write_report(analysis: Analysis, path: Path) -> list[Path]:
    """Writes `path` (.html: one file; otherwise Markdown and `<stem>.svg`); returns the files."""
    if path.suffix.lower() in (".html", ".htm"):
        path.write_text(_html(analysis), encoding="utf-8")
        return [path]
    chart = path.with_suffix(".svg")
    chart.write_text(time_share_svg(analysis), encoding="utf-8")
    path.write_text(_markdown(analysis, chart.name), encoding="utf-8")
    return [path, chart]


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _markdown(analysis: Analysis, chart: str) -> str:
    a = analysis
    advised = a.advised()
    lines = [
        f"# SQL analysis of {a.database}",
        "",
        f"Source: {a.source}. {a.statements:,} statements in {a.groups:,} query groups "
        f"({a.unparsed:,} unparsed); {a.explained:,} explained"
        f"{' with ANALYZE' if a.analyze else ''} in {a.elapsed_s:.1f} s. "
        + (
            f"Candidate indexes costed with HypoPG; advised when the cost falls "
            f"{a.min_cost_factor:g}x or more."
            if a.hypopg
            else "HypoPG is not installed: indexes are ranked by rule, not costed."
        ),
        "",
        f"![time share per query group]({chart})",
        "",
        f"## Advised indexes ({len(advised)})",
        "",
    ]
    if a.recommendations:
        lines += [
            "| statement | cost before | after | factor | advised | why |",
            "|---|--:|--:|--:|---|---|",
        ]
        for r in a.recommendations:
            lines.append(
                f"| `{r.statement}` | {r.cost_before:,.0f} | {r.cost_after:,.0f} | "
                f"{r.factor:,.1f}x | {'yes' if r.advised else 'no'} | {r.explanation} |"
            )
    else:
        lines.append("None: no candidate cut a plan's cost enough.")
    lines += ["", f"## Findings ({len(a.findings)})", ""]
    for f in a.findings:
        lines += [
            f"### {PATTERNS[f.pattern]}: {f.table} ({', '.join(f.columns)})",
            "",
            f.message,
            "",
            "```",
            *f.evidence,
            "```",
            "",
            f"Advice: {f.advice}",
            "",
        ]
    lines += ["## Query groups", "", "| # | time share | calls | mean ms | reads whole | query |"]
    lines.append("|--:|--:|--:|--:|---|---|")
    for i, g in enumerate(a.query_groups[:LISTED_GROUPS], 1):
        query = _short(g.query, 120).replace("|", "\\|")
        scans = ", ".join(g.seq_scans) or (f"error: {g.error}" if g.error else "")
        lines.append(
            f"| {i} | {g.time_share:.1%} | {g.calls:,} | {g.mean_ms:,.2f} | {scans} | `{query}` |"
        )
    return "\n".join(lines) + "\n"


def _html(analysis: Analysis) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("aiassist.modules.sql", "templates"),
        autoescape=select_autoescape(["html"]),
    )
    return env.get_template("report.html").render(
        a=analysis, patterns=PATTERNS, chart=time_share_svg(analysis), listed=LISTED_GROUPS
    )
