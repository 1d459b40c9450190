"""Lines in, scored windows out: the one object the handler, the tailer and the API share.

Each full window is scored (by the model when one serves, else the rule, through
`AIAssistService`) with its root-cause hints; a window that is not anomalous is then learned
into the baseline, so that normal keeps up with the log while an incident never becomes
normal. The first `warmup_windows` are learned without being judged. With a state directory
the templates (Drain3's snapshot) and the baseline survive a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field, computed_field

from aiassist.metrics import Metrics
from aiassist.modules.anomaly import (
    AnomalyDecision,
    AnomalyFeatures,
    AnomalySettings,
    Hint,
    module,
)
from aiassist.modules.anomaly.alerts import Change, Changes
from aiassist.modules.anomaly.baseline import WARMUP_WINDOWS, Baseline, Window
from aiassist.modules.anomaly.lines import LogLine, parse_line
from aiassist.modules.anomaly.miner import Templates
from aiassist.modules.anomaly.series import SeriesAnomaly
from aiassist.modules.anomaly.similar import SimilarTemplates
from aiassist.text import default_cache_dir

__all__ = ["Decide", "LogDetector", "ScoredWindow"]

Decide = Callable[[AnomalyFeatures], AnomalyDecision]


def _service_decide(features: AnomalyFeatures) -> AnomalyDecision:
    from aiassist.sdk.service import AIAssistService

    return AIAssistService.instance().decide(module, features)


class ScoredWindow(BaseModel):
    source: str = Field(description="The log the window is of.")
    first_line: int = Field(description="Number (from 1) of the window's first good line.")
    lines: int = Field(description="Good lines in the window.")
    decision: AnomalyDecision
    warming_up: bool = Field(description="Still learning the log: judged, never alerted.")
    changes: list[Change] = Field(
        default_factory=list,
        description="For an alert: the recent changes (model swaps, API version rollbacks) "
        "the audit trail recorded, newest first, as possible causes.",
    )
    metrics: list[SeriesAnomaly] = Field(
        default_factory=list,
        description="For an alert: the metric series scored anomalous in the same time, the "
        "one that changed first leading.",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def alert(self) -> bool:
        return self.decision.anomalous and not self.warming_up


@dataclass
class LogDetector:
    settings: AnomalySettings = field(default_factory=lambda: module.config)
    state_dir: Path | None = None
    decide: Decide = _service_decide
    #: The log's name in metrics and alerts, and where its counts go (None: nowhere).
    source: str = "app"
    metrics: Metrics | None = None
    #: Where an alert looks for recent changes and metric anomalies, and who is told of it.
    changes: Changes | None = None
    recent_metrics: Callable[[], list[SeriesAnomaly]] | None = None
    on_alert: Callable[[ScoredWindow], None] | None = None
    #: Names the known template nearest to a new one (None: AIASSIST_ANOMALY_EMBED_TEMPLATES).
    similar: SimilarTemplates | None = None
    warmup_windows: int = WARMUP_WINDOWS
    bad_lines: int = 0
    good_lines: int = 0

    def __post_init__(self) -> None:
        state = self.state_dir
        self.templates = Templates(
            state / "templates.bin" if state else None, self.settings.similarity
        )
        self.baseline = Baseline.load(state / "baseline.json") if state else Baseline()
        self._lines: list[LogLine] = []
        self._ids: list[int] = []
        if self.similar is None and self.settings.embed_templates:
            self.similar = SimilarTemplates(default_cache_dir())

    def feed(self, raw: str | bytes) -> ScoredWindow | None:
        """Take one line; the scored window when this line completes one."""
        line = parse_line(raw, self.settings.max_line_bytes)
        if line is None:
            self.bad_lines += 1
            if self.metrics is not None:
                self.metrics.anomaly_lines.labels(self.source, "bad").inc()
            return None
        self.good_lines += 1
        self._lines.append(line)
        self._ids.append(self.templates.add(line.message))
        if len(self._lines) < self.settings.window_lines:
            return None
        window = Window(self._lines, self._ids)
        self._lines, self._ids = [], []
        return self.judge(window)

    def _like(self, hint: Hint) -> None:
        assert self.similar is not None
        known = {t: self.templates.template(t) for t in self.baseline.templates}
        found = self.similar.nearest(self.templates.template(int(hint.name)), known)
        if found is not None:
            hint.like, hint.similarity = known[found[0]][:500], round(found[1], 3)

    def judge(self, window: Window) -> ScoredWindow:
        """Score a window with its hints, then learn it if it looks normal."""
        warming_up = self.baseline.windows < self.warmup_windows
        decision = self.decide(self.baseline.features(window))
        hints = self.baseline.hints(window)
        for hint in hints:
            if "template" in hint.kind:
                if hint.kind == "new template" and self.similar is not None:
                    self._like(hint)
                hint.name = self.templates.template(int(hint.name))[:500]
        decision.hints = hints
        scored = ScoredWindow(
            source=self.source,
            first_line=self.good_lines - len(window.lines) + 1,
            lines=len(window.lines),
            decision=decision,
            warming_up=warming_up,
        )
        if self.metrics is not None:
            self.metrics.anomaly_lines.labels(self.source, "scored").inc(scored.lines)
            if scored.alert:
                self.metrics.anomaly_alerts.labels(self.source).inc()
        if scored.alert:
            if self.changes is not None:
                scored.changes = self.changes()
            if self.recent_metrics is not None:
                scored.metrics = self.recent_metrics()
            if self.on_alert is not None:
                self.on_alert(scored)
        if warming_up or not decision.anomalous:
            self.baseline.learn(window)
            if self.state_dir is not None:
                self.templates.save()
                self.baseline.save(self.state_dir / "baseline.json")
        return scored
