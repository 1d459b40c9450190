"""Training for `anomaly`: a LightGBM classifier of P(incident) from window features,
exported to ONNX.

A log is cut into windows; the first `HISTORY` are its normal past, learned into a
`Baseline`. In each later window, with probability one half, one fault of `faults.py` is
spliced in, and the window's features are taken against the baseline, which then learns
the window if it holds no fault (as the detector learns what it calls normal). The label
is whether a fault was spliced. `synthetic` does this on generated logs (`simulator.py`);
the daemon retrains from recorded outcomes (`incident`) once the user's windows have them.
`LogHistory` is shared with the benchmark, which does the same on real logs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from aiassist.modules import Decision
from aiassist.modules.anomaly import AnomalyFeatures, module
from aiassist.modules.anomaly.baseline import WARMUP_WINDOWS, Baseline, Window
from aiassist.modules.anomaly.faults import KINDS, Fault, inject
from aiassist.modules.anomaly.lines import LogLine, parse_line
from aiassist.modules.anomaly.miner import Templates
from aiassist.modules.anomaly.simulator import LogSpec, generate
from aiassist.training.base import Dataset, ExportedModel, brier_quality, synthetic_dataset
from aiassist.training.export import fit_lightgbm_classifier

__all__ = ["HISTORY", "AnomalyTrainer", "LogHistory", "faulty_windows", "trainer"]

HISTORY = WARMUP_WINDOWS
_LATER = 80  # judged windows of one generated log


class LogHistory:
    """A log cut into windows, its templates, and the baseline of its first `history`."""

    def __init__(self, lines: Sequence[str], window: int, history: int = HISTORY) -> None:
        self.templates = Templates()
        self.baseline = Baseline()
        self._known: dict[str, int] = {}  # message -> template id
        self._parsed: dict[str, LogLine | None] = {}
        self.windows = [
            list(lines[i : i + window]) for i in range(0, len(lines) - window + 1, window)
        ]
        self.past = [self.mine(w) for w in self.windows[:history]]
        for w in self.past:
            self.baseline.learn(w)
        self.history = [line for w in self.past for line in w.lines]
        presence = Counter(t for w in self.past for t in set(w.templates))
        self.regular = presence.most_common(1)[0][0] if presence else None

    def mine(self, lines: Sequence[str]) -> Window:
        """The window of these lines; a message mined before is not mined again (its
        template does not change once Drain3 has it)."""
        parsed = [p for p in map(self._parse, lines) if p is not None]
        return Window(parsed, [self._template(p.message) for p in parsed])

    def _parse(self, line: str) -> LogLine | None:
        if line not in self._parsed:
            self._parsed[line] = parse_line(line)
        return self._parsed[line]

    def _template(self, message: str) -> int:
        if (known := self._known.get(message)) is None:
            known = self._known[message] = self.templates.add(message)
        return known

    def is_regular(self, line: str) -> bool:
        parsed = self._parse(line)
        return parsed is not None and self._template(parsed.message) == self.regular

    def fault(
        self, raw: Sequence[str], donor: Sequence[str], rng: np.random.Generator
    ) -> Fault | None:
        """With probability one half, one fault of a random kind spliced into `raw`."""
        if rng.random() >= 0.5:
            return None
        kind = KINDS[int(rng.integers(len(KINDS)))]
        fault = inject(kind, raw, self.history, donor, rng, regular=self.is_regular)
        if kind == "missing_heartbeat" and fault.line is None:
            return None  # the regular template was not in this window: nothing to miss
        return fault


def faulty_windows(
    lines: Sequence[str], donor: Sequence[str], window: int, rng: np.random.Generator
) -> tuple[list[AnomalyFeatures], list[float]]:
    """Features of every window after the history, half with a fault, and their labels."""
    log = LogHistory(lines, window)
    features: list[AnomalyFeatures] = []
    labels: list[float] = []
    for raw in log.windows[HISTORY:]:
        fault = log.fault(raw, donor, rng)
        mined = log.mine(fault.lines if fault else raw)
        features.append(log.baseline.features(mined))
        labels.append(0.0 if fault is None else 1.0)
        if fault is None:
            log.baseline.learn(mined)
    return features, labels


class AnomalyTrainer:
    def target(self, outcome: dict[str, Any]) -> float:
        return 1.0 if outcome.get("incident") else 0.0

    def fit(self, data: Dataset, seed: int) -> ExportedModel:
        return fit_lightgbm_classifier(data, seed)

    def score(self, decision: Decision) -> float:
        return float(decision.score)  # type: ignore[attr-defined]

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float:
        return brier_quality(y, scores)

    def synthetic(self, n: int, seed: int) -> Dataset:
        rng = np.random.default_rng(seed)

        def world() -> tuple[list[AnomalyFeatures], list[float]]:
            window = int(rng.choice([40, 100]))
            lines = generate(LogSpec.draw(rng), window * (HISTORY + _LATER), rng)
            donor = generate(LogSpec.draw(rng), 500, rng)
            return faulty_windows(lines, donor, window, rng)

        return synthetic_dataset(module, n, world)


trainer = AnomalyTrainer()
