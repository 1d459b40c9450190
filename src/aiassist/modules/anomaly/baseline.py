"""What normal looks like for one log, and how far a window is from it.

The baseline counts, over the windows it has learned, how many lines each template and each
component had, in how many windows each template appeared, and the share of error lines.
A window is then described by how surprising it is under that baseline, in numbers that
mean the same for any log (so one rule, and one model, serve every source):

- *surprise* of a count: -log10 of its Poisson probability given the baseline's rate, for
  counts above the rate (a burst), and for a template present in nearly every window, of
  its absence (a missing heartbeat);
- the share of lines whose template or component the baseline never saw;
- the Jensen-Shannon divergence of the window's template mix from the baseline's.

Root-cause hints rank the templates and components by the same surprise, with a line of
evidence each.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiassist.modules.anomaly import AnomalyFeatures, Hint
from aiassist.modules.anomaly.lines import LogLine

__all__ = ["WARMUP_WINDOWS", "Baseline", "Window"]

#: Windows a log's baseline learns before any is judged: the detector's warm-up and the
#: trainer's history, the same so that the model sees baselines as young as it will judge.
WARMUP_WINDOWS = 20
#: A template in at least this share of windows is expected in every one.
REGULAR = 0.9
#: Cap of a surprise (-log10 p): beyond it, every burst is simply extreme.
MAX_SURPRISE = 300.0


@dataclass
class Window:
    """Consecutive lines of one log with their template ids."""

    lines: list[LogLine]
    templates: list[int]


def _surprise(count: int, rate: float, spread: float = 1.0) -> float:
    """-log10 P(X = count), for counts above the rate (else 0), where X has mean `rate`
    and variance `spread x rate`: Poisson when the thing comes at an even pace (spread 1),
    negative binomial when the log's own windows show it comes in bursts (spread > 1), so
    that a burst the log often has is no surprise."""
    if count <= rate:
        return 0.0
    if spread <= 1.0:
        log_p = count * math.log(rate) - rate - math.lgamma(count + 1)
    else:
        r = rate / (spread - 1)  # NB(r, p) with mean rate and variance spread x rate
        log_p = (
            math.lgamma(count + r) - math.lgamma(r) - math.lgamma(count + 1)
            + r * math.log(1 / spread) + count * math.log(1 - 1 / spread)
        )  # fmt: skip
    return min(-log_p / math.log(10), MAX_SURPRISE)


def _absence(rate: float) -> float:
    """-log10 P(X = 0) for X ~ Poisson(rate)."""
    return min(rate / math.log(10), MAX_SURPRISE)


@dataclass
class Baseline:
    lines: int = 0
    windows: int = 0
    errors: int = 0
    templates: Counter[int] = field(default_factory=Counter)
    presence: Counter[int] = field(default_factory=Counter)
    components: Counter[str] = field(default_factory=Counter)
    #: Sums over the learned windows of each template's and component's squared count.
    template_squares: Counter[int] = field(default_factory=Counter)
    component_squares: Counter[str] = field(default_factory=Counter)
    hosts: Counter[str] = field(default_factory=Counter)
    host_squares: Counter[str] = field(default_factory=Counter)
    owners: dict[int, str] = field(default_factory=dict)  # template -> its component

    def learn(self, window: Window) -> None:
        self.lines += len(window.lines)
        self.windows += 1
        self.errors += sum(line.is_error for line in window.lines)
        templates = Counter(window.templates)
        components = Counter(line.component for line in window.lines)
        self.templates.update(templates)
        self.presence.update(templates.keys())
        self.components.update(components)
        self.template_squares.update({t: k * k for t, k in templates.items()})
        self.component_squares.update({c: k * k for c, k in components.items()})
        hosts = Counter(line.host for line in window.lines if line.host != "-")
        self.hosts.update(hosts)
        self.host_squares.update({h: k * k for h, k in hosts.items()})
        for line, t in zip(window.lines, window.templates, strict=True):
            self.owners.setdefault(t, line.component)

    def _rate(self, count: int, n: int) -> float:
        """Expected lines of a thing seen `count` times, in a window of `n` lines (a half
        line of prior, so that the unseen have a small rate rather than none)."""
        return (count + 0.5) / (self.lines + 1) * n

    def _spread(self, total: int, squares: int) -> float:
        """Variance over mean of a thing's count a window, over the learned windows (1, a
        Poisson's, until there are enough windows to tell)."""
        if self.windows < 5 or total == 0:
            return 1.0
        mean = total / self.windows
        return max(squares / self.windows - mean * mean, 0.0) / mean

    def _template_surprise(self, t: int, k: int, n: int) -> float:
        spread = self._spread(self.templates[t], self.template_squares[t])
        return _surprise(k, self._rate(self.templates[t], n), spread)

    def _component_surprise(self, c: str, k: int, n: int) -> float:
        spread = self._spread(self.components[c], self.component_squares[c])
        return _surprise(k, self._rate(self.components[c], n), spread)

    def _host_surprise(self, h: str, k: int, n: int) -> float:
        spread = self._spread(self.hosts[h], self.host_squares[h])
        return _surprise(k, self._rate(self.hosts[h], n), spread)

    def features(self, window: Window) -> AnomalyFeatures:
        n = len(window.lines)
        counts = Counter(window.templates)
        components = Counter(line.component for line in window.lines)
        new = {t for t in counts if self.templates[t] == 0}
        regular = self._regular()
        bursts = [self._template_surprise(t, k, n) for t, k in counts.items()]
        missing = max(
            (_absence(self._rate(self.templates[t], n)) for t in regular if t not in counts),
            default=0.0,
        )
        component_burst = max(self._component_surprise(c, k, n) for c, k in components.items())
        errors = sum(line.is_error for line in window.lines)
        return AnomalyFeatures(
            lines=n,
            new_template_share=sum(counts[t] for t in new) / n,
            new_templates=len(new),
            new_component_share=sum(k for c, k in components.items() if not self.components[c]) / n,
            burst_surprise=max(bursts),
            missing_surprise=missing,
            component_surprise=component_burst,
            surprising_templates=sum(b >= 3 for b in bursts),
            missing_regular_share=(
                sum(t not in counts for t in regular) / len(regular) if regular else 0.0
            ),
            error_share=errors / n,
            baseline_error_share=self.errors / self.lines if self.lines else 0.0,
            divergence=self._divergence(counts, n),
            learned_windows=min(self.windows, 1_000_000),
        )

    def hints(self, window: Window, top: int = 3) -> list[Hint]:
        """The templates, components and hosts that changed most, most surprising first;
        each with the window's line where it first showed (0 for a missing template)."""
        n = len(window.lines)
        counts = Counter(window.templates)
        first: dict[int, int] = {}
        for i, t in enumerate(window.templates):
            first.setdefault(t, i)
        found = [
            Hint(
                kind="new template" if self.templates[t] == 0 else "template burst",
                name=str(t),
                component=window.lines[first[t]].component[:100],
                surprise=round(self._template_surprise(t, k, n), 2),
                evidence=window.lines[first[t]].text[:300],
                line=first[t] + 1,
            )
            for t, k in counts.items()
        ]
        found += [
            Hint(
                kind="missing template",
                name=str(t),
                component=self.owners.get(t, "")[:100],
                surprise=round(_absence(self._rate(self.templates[t], n)), 2),
                evidence="",
            )
            for t in self._regular()
            if t not in counts
        ]
        by_component: dict[str, int] = {}
        by_host: dict[str, int] = {}
        for i, line in enumerate(window.lines):
            by_component.setdefault(line.component, i)
            if line.host != "-":
                by_host.setdefault(line.host, i)
        found += [
            Hint(
                kind="new component" if self.components[c] == 0 else "component burst",
                name=c[:500],
                component=c[:100],
                surprise=round(self._component_surprise(c, k, n), 2),
                evidence=window.lines[by_component[c]].text[:300],
                line=by_component[c] + 1,
            )
            for c, k in Counter(line.component for line in window.lines).items()
        ]
        found += [
            Hint(
                kind="new host" if self.hosts[h] == 0 else "host burst",
                name=h,
                component=window.lines[by_host[h]].component[:100],
                surprise=round(self._host_surprise(h, k, n), 2),
                evidence=window.lines[by_host[h]].text[:300],
                line=by_host[h] + 1,
            )
            for h, k in Counter(line.host for line in window.lines if line.host != "-").items()
        ]
        # most surprising first; of equal surprise, what showed first
        found.sort(key=lambda h: (-h.surprise, h.line or n + 1))
        return [h for h in found if h.surprise > 0][:top]

    def _regular(self) -> list[int]:
        if self.windows < 5:
            return []
        return [t for t, w in self.presence.items() if w >= REGULAR * self.windows]

    def _divergence(self, counts: Counter[int], n: int) -> float:
        """Jensen-Shannon divergence (base 2, 0..1) of the window's mix from the baseline's."""
        if not self.lines:
            return 1.0
        total = 0.0
        for t in set(counts) | set(self.templates):
            p = counts[t] / n
            q = self.templates[t] / self.lines
            m = (p + q) / 2
            total += (p * math.log2(p / m) if p else 0.0) + (q * math.log2(q / m) if q else 0.0)
        return min(max(total / 2, 0.0), 1.0)

    # --- kept across restarts ----------------------------------------------------------
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        state = {
            "lines": self.lines,
            "windows": self.windows,
            "errors": self.errors,
            "templates": {str(k): v for k, v in self.templates.items()},
            "presence": {str(k): v for k, v in self.presence.items()},
            "components": dict(self.components),
            "template_squares": {str(k): v for k, v in self.template_squares.items()},
            "component_squares": dict(self.component_squares),
            "hosts": dict(self.hosts),
            "host_squares": dict(self.host_squares),
            "owners": {str(k): v for k, v in self.owners.items()},
        }
        tmp.write_text(json.dumps(state))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Baseline:
        if not path.exists():
            return cls()
        state = json.loads(path.read_text())
        return cls(
            lines=state["lines"],
            windows=state["windows"],
            errors=state["errors"],
            templates=Counter({int(k): v for k, v in state["templates"].items()}),
            presence=Counter({int(k): v for k, v in state["presence"].items()}),
            components=Counter(state["components"]),
            template_squares=Counter(
                {int(k): v for k, v in state.get("template_squares", {}).items()}
            ),
            component_squares=Counter(state.get("component_squares", {})),
            hosts=Counter(state.get("hosts", {})),
            host_squares=Counter(state.get("host_squares", {})),
            owners={int(k): v for k, v in state["owners"].items()},
        )
