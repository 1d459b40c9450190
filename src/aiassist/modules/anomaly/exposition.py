"""Prometheus text exposition in, `MetricSample`s out (prometheus_client's own parser).

Counters, and the `_count`, `_sum` and `_bucket` series of histograms and summaries, are
marked as counters (scored by their rate); so is a sample of an untyped family whose name
ends in `_total`. The `_created` families prometheus_client writes beside each counter and
histogram hold creation times, not measurements, and are left out, as are values that are
not finite (a summary's quantile with no observations is NaN).
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from aiassist.modules.anomaly.series import MetricSample

__all__ = ["ExpositionError", "parse_exposition"]

_CUMULATIVE = ("_count", "_sum", "_bucket")


class ExpositionError(ValueError):
    """The text is not the Prometheus exposition format, or holds a sample out of bounds."""


def _is_counter(family_type: str, sample_name: str) -> bool:
    if family_type == "counter":
        return True
    if family_type in ("histogram", "summary"):
        return sample_name.endswith(_CUMULATIVE)
    return family_type in ("unknown", "untyped") and sample_name.endswith("_total")


def parse_exposition(text: str, limit: int) -> tuple[list[MetricSample], int]:
    """The samples of `text` (at most `limit`) and how many were left out as not finite."""
    samples: list[MetricSample] = []
    left_out = 0
    try:
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):
                continue
            for s in family.samples:
                if not math.isfinite(s.value):
                    left_out += 1
                    continue
                if len(samples) >= limit:
                    raise ExpositionError(f"more than {limit} samples; send them in parts")
                try:
                    samples.append(
                        MetricSample(
                            name=s.name,
                            labels=s.labels,
                            value=s.value,
                            timestamp=s.timestamp,
                            counter=_is_counter(family.type, s.name),
                        )
                    )
                except ValidationError as exc:
                    problem = exc.errors()[0]
                    where = ".".join(str(p) for p in problem["loc"])
                    raise ExpositionError(
                        f"sample {s.name[:100]!r}: {where}: {problem['msg']}"
                    ) from None
    except ExpositionError:
        raise
    except (ValueError, ArithmeticError, IndexError, KeyError, TypeError) as exc:
        raise ExpositionError(f"not the Prometheus text format: {str(exc)[:200]}") from None
    return samples, left_out
