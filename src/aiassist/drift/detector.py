"""Sequential detection of a field's missing rate (or wrong type rate) rising on a new version.

For each field of the stable version's reference profile, a one-sided Bernoulli CUSUM
(Page, 1954) watches the candidate version's stream of "field missing" (and, where the field
is present, "type the stable version does not use") indicators:

    S_n = max(0, S_{n-1} + x_n * log(p1 / p0) + (1 - x_n) * log((1 - p1) / (1 - p0)))

and alarms when `S_n >= h`. `p0` is what counts as normal: the Wilson upper bound (z = 3)
of the stable rate plus a tolerance for natural variation; `p1 = p0 + shift` is the smallest
rise worth a rollback. While the candidate's true rate stays at or below `p0`, Wald's
inequality bounds the chance that one CUSUM cycle ever reaches `h` by `e^-h`, so the mean
number of requests before a false alarm of one test is at least `e^h` (Lorden, 1971). With
`K` tests on a stream, `h = log(false_alarm_requests * K)` keeps the whole stream's mean run
to a false alarm at or above `false_alarm_requests` (a union bound: Bonferroni for sequential
tests). Larger rises are found faster: the statistic climbs by `log(p1/p0)` per missing field.

When observations name their client, each request is judged against its own client's
stable rates where the client has a history on the stable version (a risk-adjusted CUSUM,
Steiner et al., 2000): `p0` and `p1` then vary from request to request, and the bound holds
unchanged, since each request's likelihood ratio still has mean at most 1 under the null.
This is what keeps a burst of one legacy client (one that never sends a field) from
reading as a drift of the whole version. The guard names clients by default
(`aiassist.drift.clients`), so this is the test it runs unless told otherwise.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from aiassist.drift.profile import Observation, Profile, part_of

__all__ = ["DetectorConfig", "DriftDetector", "FieldDrift", "Finding", "wilson_upper"]

Kind = Literal["missing", "type"]
_RECENT = 200  # observations kept to name the fields that appeared (renames)


def wilson_upper(successes: float, n: float, z: float = 3.0) -> float:
    """Upper end of the Wilson score interval of a binomial rate."""
    if n <= 0:
        return 1.0
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))


@dataclass(frozen=True)
class DetectorConfig:
    """How sensitive the test is and how rarely it may be wrong on clean traffic."""

    #: Mean number of requests of one stream between two false alarms, at least.
    false_alarm_requests: float = 1e7
    #: Observations of the stable version on an endpoint before its new versions are judged.
    min_reference: int = 200
    #: Rise of a missing rate over the stable one that still counts as natural variation.
    missing_tolerance: float = 0.05
    #: The same for the share of values with a type the stable version does not use.
    type_tolerance: float = 0.02
    #: Smallest rise (over the tolerated rate) the test is tuned to find quickly.
    shift: float = 0.15
    #: A type makes up at least this share of a field's stable values to count as its type.
    min_type_share: float = 0.01
    #: z of the Wilson upper bound of the stable rates (their estimation error).
    z: float = 3.0
    #: Stable requests of a client before its requests are judged against its own rates.
    min_client_reference: int = 30


@dataclass(frozen=True, slots=True)
class _Test:
    name: str
    kind: Kind
    part: str
    reference_rate: float
    p0: float
    p1: float
    up: float
    down: float
    types: frozenset[str]


@dataclass(frozen=True)
class FieldDrift:
    """One offending field: what rose, from what to what, since how many requests."""

    field: str
    kind: Kind
    reference_rate: float
    observed_rate: float
    since_requests: int
    statistic: float
    crossed: bool
    detail: str = ""

    def describe(self) -> str:
        what = "missing" if self.kind == "missing" else f"wrong type ({self.detail})"
        return (
            f"{self.field} {what} in {self.observed_rate:.0%} of the last "
            f"{self.since_requests} requests (stable: {self.reference_rate:.1%})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "kind": self.kind,
            "reference_rate": round(self.reference_rate, 4),
            "observed_rate": round(self.observed_rate, 4),
            "since_requests": self.since_requests,
            "statistic": round(self.statistic, 2),
            "crossed": self.crossed,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Finding:
    """An alarm: the offending fields, how severe, and fields that appeared meanwhile."""

    severity: Literal["minor", "major", "critical"]
    fields: list[FieldDrift]
    new_fields: list[tuple[str, float]]
    observations: int
    threshold: float
    explanation: str = field(default="")


class DriftDetector:
    """Judges one candidate stream (an endpoint on a new version) against the reference
    profile of the stable version on the same endpoint. Single-threaded, like `Profile`."""

    def __init__(
        self,
        reference: Profile,
        config: DetectorConfig | None = None,
        exempt: frozenset[str] = frozenset(),
    ) -> None:
        self.reference = reference
        self.config = config or DetectorConfig()
        self.exempt = exempt
        self.observations = 0
        self.threshold = math.inf
        self._tests: list[_Test] = []
        self._state: dict[tuple[str, Kind], list[float]] = {}  # S, n and k since S was 0
        self._planned_at = -1
        self._client_plans: dict[str, tuple[int, list[_Test]]] = {}
        self._recent: deque[frozenset[str]] = deque(maxlen=_RECENT)

    @property
    def tests(self) -> int:
        return len(self._tests)

    def reset(self) -> None:
        self._state.clear()
        self._recent.clear()
        self.observations = 0

    def update(self, obs: Observation) -> Finding | None:
        """Add one observation; a `Finding` when some test crosses the threshold."""
        self.observations += 1
        self._recent.append(frozenset(obs.fields))
        if self._stale():
            self._plan()
        alarm = False
        tests = self._tests
        if obs.client is not None and obs.client in self.reference.clients:
            tests = self._client_tests(obs.client)
        for test in tests:
            if test.part not in obs.parts:
                continue
            got = obs.fields.get(test.name)
            if test.kind == "missing":
                event = got is None
            elif got is None:
                continue
            else:
                event = got[0] not in test.types
            state = self._state[(test.name, test.kind)]
            s = state[0] + (test.up if event else test.down)
            if s <= 0.0:
                state[0], state[1], state[2] = 0.0, 0.0, 0.0
                continue
            state[0] = s
            state[1] += 1
            state[2] += event
            if s >= self.threshold:
                alarm = True
        return self._finding() if alarm else None

    # --- the plan: which tests, with which rates -----------------------------------------
    def _stale(self) -> bool:
        n = self.reference.observations
        if n < self.config.min_reference:
            return False
        return self._planned_at < 0 or abs(n - self._planned_at) > 0.05 * self._planned_at

    def _plan(self) -> None:
        c, ref = self.config, self.reference
        self._planned_at = ref.observations
        tests: list[_Test] = []
        for name, stats in ref.fields.items():
            if name in self.exempt:
                continue
            seen = ref.observed(name)
            if seen < c.min_reference:
                continue
            present = min(stats.present, seen)
            missing = (seen - present) / seen
            p0 = wilson_upper(seen - present, seen, c.z) + c.missing_tolerance
            test = _bernoulli(name, "missing", missing, p0, c.shift, frozenset())
            if test is not None:
                tests.append(test)
            if present < c.min_reference // 4:
                continue
            usual = frozenset(t for t, k in stats.types.items() if k >= c.min_type_share * present)
            odd = present - sum(stats.types[t] for t in usual)
            p0 = wilson_upper(odd, present, c.z) + c.type_tolerance
            test = _bernoulli(name, "type", odd / present, p0, c.shift, usual)
            if test is not None:
                tests.append(test)
        self._tests = tests
        self._client_plans.clear()
        self._state = {
            (t.name, t.kind): self._state.get((t.name, t.kind), [0.0, 0.0, 0.0]) for t in tests
        }
        fa = max(c.false_alarm_requests, 1.0)
        self.threshold = math.log(fa * max(1, len(tests))) if tests else math.inf

    def _client_tests(self, client: str) -> list[_Test]:
        """The tests with this client's own stable rates as what is normal for its requests
        (a risk-adjusted CUSUM): a client that never sent a field on the stable version is
        not a drift when it dominates the traffic for a while. Tests the client's history
        makes uninformative (it nearly always omits the field) are left out for it."""
        sub = self.reference.clients[client]
        cached = self._client_plans.get(client)
        if cached is not None and cached[0] * 1.05 + 20 >= sub.observations:
            return cached[1]
        c = self.config
        tests: list[_Test] = []
        for test in self._tests:
            stats = sub.fields.get(test.name)
            present = 0 if stats is None else stats.present
            if test.kind == "missing":
                seen = sub.observed(test.name)
                if seen < c.min_client_reference:
                    tests.append(test)
                    continue
                present = min(present, seen)
                p0 = wilson_upper(seen - present, seen, c.z) + c.missing_tolerance
            else:
                if stats is None or present < c.min_client_reference:
                    tests.append(test)
                    continue
                odd = present - sum(stats.types.get(t, 0) for t in test.types)
                seen = present
                p0 = wilson_upper(odd, present, c.z) + c.type_tolerance
            own = _bernoulli(test.name, test.kind, test.reference_rate, p0, c.shift, test.types)
            if own is not None:
                tests.append(own)
        if len(self._client_plans) >= 10_000:
            self._client_plans.clear()
        self._client_plans[client] = (sub.observations, tests)
        return tests

    # --- the explanation -----------------------------------------------------------------
    def _finding(self) -> Finding:
        h = self.threshold
        drifts: list[FieldDrift] = []
        for test in self._tests:
            s, n, k = self._state[(test.name, test.kind)]
            if s < 0.5 * h or n == 0:
                continue
            detail = ""
            if test.kind == "type":
                detail = "stable: " + "/".join(sorted(test.types))
            drifts.append(
                FieldDrift(
                    test.name, test.kind, test.reference_rate, k / n, int(n), s, s >= h, detail
                )
            )
        drifts.sort(key=lambda d: (not d.crossed, -(d.observed_rate - d.reference_rate)))
        jump = max((d.observed_rate - d.reference_rate for d in drifts if d.crossed), default=0.0)
        severity: Literal["minor", "major", "critical"] = (
            "critical" if jump >= 0.5 else "major" if jump >= 0.2 else "minor"
        )
        window = min(len(self._recent), max((d.since_requests for d in drifts), default=1))
        new_fields = self._new_fields(window)
        parts = [d.describe() for d in drifts[:5]]
        if new_fields:
            parts.append(
                "new fields: " + ", ".join(f"{n} ({share:.0%})" for n, share in new_fields)
            )
        explanation = f"{severity}: " + "; ".join(parts)
        return Finding(severity, drifts, new_fields, self.observations, h, explanation[:1000])

    def _new_fields(self, window: int) -> list[tuple[str, float]]:
        """Fields of the last `window` requests that the stable version never sends: with a
        missing field, the likely new name of a renamed one."""
        if window <= 0:
            return []
        counts: dict[str, int] = {}
        recent = list(self._recent)[-window:]
        for names in recent:
            for name in names:
                if name not in self.reference.fields:
                    counts[name] = counts.get(name, 0) + 1
        shares = [(n, k / len(recent)) for n, k in counts.items() if k >= 0.2 * len(recent)]
        return sorted(shares, key=lambda x: -x[1])[:5]


def _bernoulli(
    name: str, kind: Kind, rate: float, p0: float, shift: float, types: frozenset[str]
) -> _Test | None:
    """A CUSUM test of `p0` against `p0 + shift`; None when no rise could be told apart."""
    p1 = p0 + shift
    if p1 >= 0.995:
        return None
    up, down = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    return _Test(name, kind, part_of(name), rate, p0, p1, up, down, types)
