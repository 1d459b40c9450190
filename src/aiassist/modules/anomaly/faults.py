"""Documented faults spliced into real logs: how anomalies are made where none are labelled.

No public log sample this project can ship labels its anomalies, so benchmarks (and the
trainer) take real normal lines and splice one fault into a window:

- `error_burst`: an error line of the log (or, with none, its rarest line) repeated for
  20-40% of the window, at random places, its numbers redrawn;
- `missing_heartbeat`: every line of the log's most regular template removed;
- `new_templates`: 5-10 consecutive real lines of another log (templates never seen here);
- `component_crash`: a busy component falls silent half way through the window, after one to
  three crash lines of its own (segfault, core dump, restart).

Each fault names its root cause: the component or the line whose template should rank first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from aiassist.modules.anomaly.lines import LogLine, parse_line

__all__ = ["KINDS", "Fault", "inject"]

Kind = Literal["error_burst", "missing_heartbeat", "new_templates", "component_crash"]
KINDS: tuple[Kind, ...] = ("error_burst", "missing_heartbeat", "new_templates", "component_crash")
_NUMBER = re.compile(r"\d+")
_CRASH = (
    "{c}[{pid}]: segfault at {hex} ip {hex} sp {hex} error 4 in libc-2.3.so",
    "{c}[{pid}]: terminated by signal 11 (core dumped)",
    "{c}[{pid}]: fatal error: cannot allocate memory, restarting",
)


@dataclass(frozen=True)
class Fault:
    kind: Kind
    lines: list[str]
    #: The root cause: a component name, or a line whose template it is.
    component: str | None = None
    line: str | None = None


def _redraw(text: str, rng: np.random.Generator) -> str:
    return _NUMBER.sub(lambda m: "".join(map(str, rng.integers(0, 10, len(m.group())))), text)


def inject(
    kind: Kind,
    window: Sequence[str],
    history: Sequence[LogLine],
    donor: Sequence[str],
    rng: np.random.Generator,
    regular: Callable[[str], bool] | None = None,
) -> Fault:
    """`window` with one fault of `kind`, as many lines long as it was (windows are cut by
    line count): lines a fault adds displace random lines of the window, lines it removes
    are made up by the log's next normal lines. `history` is the log's normal past (parsed
    once by the caller), `donor` another log, and `regular` tells the lines of the log's
    most regular template."""
    fault = _splice(kind, window, history, donor, rng, regular)
    lines, size = fault.lines, len(window)
    if len(lines) > size:
        added = set(lines) - set(window)
        originals = [i for i, line in enumerate(lines) if line not in added]
        drop = set(rng.choice(originals, min(len(lines) - size, len(originals)), replace=False))
        lines = [line for i, line in enumerate(lines) if i not in drop][:size]
    elif len(lines) < size:
        start = int(rng.integers(max(len(history) - size, 1)))
        filler = [
            p.text
            for p in history[start : start + size]
            if not (regular and regular(p.text)) and p.component != fault.component
        ]
        lines = lines + filler[: size - len(lines)]
    return Fault(fault.kind, lines, fault.component, fault.line)


def _splice(
    kind: Kind,
    window: Sequence[str],
    history: Sequence[LogLine],
    donor: Sequence[str],
    rng: np.random.Generator,
    regular: Callable[[str], bool] | None,
) -> Fault:
    lines = list(window)
    if kind == "error_burst":
        errors = [p.text for p in history if p.is_error]
        if errors:
            chosen = errors[int(rng.integers(len(errors)))]
        else:  # no error level in this log: its rarest kind of line stands in
            by_component: dict[str, list[str]] = {}
            for p in history:
                by_component.setdefault(p.component, []).append(p.text)
            rare = min(by_component.values(), key=len)
            chosen = rare[int(rng.integers(len(rare)))]
        for _ in range(int(len(lines) * rng.uniform(0.2, 0.4))):
            lines.insert(int(rng.integers(len(lines) + 1)), _redraw(chosen, rng))
        return Fault(kind, lines, line=chosen)
    if kind == "missing_heartbeat":
        assert regular is not None, "missing_heartbeat needs the regular template"
        removed = [line for line in lines if regular(line)]
        kept = [line for line in lines if not regular(line)]
        return Fault(kind, kept, line=removed[0] if removed else None)
    if kind == "new_templates":
        count = int(rng.integers(5, 11))
        start = int(rng.integers(len(donor) - count))
        spliced = list(donor[start : start + count])
        at = int(rng.integers(len(lines) + 1))
        return Fault(kind, lines[:at] + spliced + lines[at:], line=spliced[0])
    parsed = [p for p in map(parse_line, lines) if p is not None]
    counts: dict[str, int] = {}
    for p in parsed:
        if p.component != "-":
            counts[p.component] = counts.get(p.component, 0) + 1
    component = max(counts, key=lambda c: counts[c]) if counts else "app"
    half = len(lines) // 2
    crash = [
        _CRASH[i].format(
            c=component, pid=int(rng.integers(100, 30_000)), hex=hex(int(rng.integers(1 << 32)))
        )
        for i in range(int(rng.integers(1, 4)))
    ]
    prefix = _prefix(lines[half] if half < len(lines) else lines[-1])
    after = [
        line for line in lines[half:] if (q := parse_line(line)) is None or q.component != component
    ]
    return Fault(kind, lines[:half] + [prefix + c for c in crash] + after, component=component)


def _prefix(line: str) -> str:
    """The line's header (timestamp, host) up to where its component starts."""
    parsed = parse_line(line)
    if parsed is None or parsed.component == "-":
        return ""
    return line[: line.find(parsed.component)]
