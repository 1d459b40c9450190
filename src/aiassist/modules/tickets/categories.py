"""What a ticket is about: the categories, and two ways of reading them from its text.

`CATEGORIES` names each category's queue (the group that handles it), its typical handling
time, its severity weight, the keywords the rule looks for and a few sentences that
describe it. `TextReader` turns a ticket's text into category probabilities and an impact
estimate (0-1: how much of the service the text says is hurt):

- with the packaged MiniLM (`aiassist.text`), by cosine similarity of the text's embedding
  to each category's sentences (a softmax over the best match per category), and to
  sentences of wide and of narrow impact;
- without it, by keywords: the share of keyword hits per category, none: a prior by source.

Readings are cached by text: alerts and inspection reports repeat their wording.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiassist.text import TextEmbedder, shared_embedder

__all__ = ["CATEGORIES", "CATEGORY_NAMES", "Category", "Reading", "TextReader"]


@dataclass(frozen=True)
class Category:
    name: str
    queue: str
    handling_s: float  # typical time to handle, when nothing better is known
    severity: float  # importance weight of one ticket of this kind
    keywords: tuple[str, ...]
    sentences: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category(
        "outage", "sre", 1800.0, 8.0,
        ("down", "outage", "unavailable", "503", "502", "500", "timeout", "not loading",
         "unreachable", "error rate"),
        ("The service is down and nobody can use it.",
         "Requests fail with server errors for many customers.",
         "An alert fired: the error rate of the API is above its threshold."),
    ),
    Category(
        "bug", "engineering", 3600.0, 2.0,
        ("bug", "broken", "crash", "wrong", "incorrect", "exception", "regression"),
        ("A feature behaves incorrectly after the last release.",
         "The application crashes when I click this button.",
         "The export produces wrong numbers."),
    ),
    Category(
        "access", "support", 480.0, 2.0,
        ("login", "log in", "password", "sign in", "2fa", "locked", "permission", "access"),
        ("I cannot sign in to my account.",
         "Please reset my password, I am locked out.",
         "A colleague needs permission to see the project."),
    ),
    Category(
        "billing", "billing", 720.0, 1.5,
        ("invoice", "charge", "charged", "refund", "payment", "billing", "subscription"),
        ("I was charged twice this month.",
         "Please send a corrected invoice.",
         "How do I change the payment method of my subscription?"),
    ),
    Category(
        "question", "support", 360.0, 1.0,
        ("how do i", "how to", "question", "where can", "is it possible", "documentation"),
        ("How do I set up this feature?",
         "Is it possible to export my data?",
         "Where can I find the documentation about the API?"),
    ),
    Category(
        "inspection", "ops", 900.0, 1.0,
        ("certificate", "disk", "backup", "expires", "expiring", "check", "scan", "patch"),
        ("Scheduled check: a TLS certificate expires soon.",
         "Inspection found a disk over 85 percent full.",
         "The nightly backup verification reported a warning."),
    ),
)  # fmt: skip
CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)

#: Where nothing in the text speaks: what each source usually is.
_PRIOR = {
    "complaint": (0.10, 0.25, 0.20, 0.20, 0.25, 0.0),
    "alert": (0.80, 0.10, 0.0, 0.0, 0.0, 0.10),
    "inspection": (0.0, 0.05, 0.0, 0.0, 0.0, 0.95),
}
_WIDE = (
    "All customers are affected, the whole platform is down.",
    "Many users in every region report the same failure.",
)
_NARROW = ("Only my own account has this issue.", "One user asks a question.")
_WIDE_WORDS = ("everyone", "all users", "all customers", "whole", "entire", "every", "many")
_SHARPNESS = 12.0  # softmax temperature over cosine similarities
_CACHE = 8192


@dataclass(frozen=True)
class Reading:
    """A text's category probabilities (in `CATEGORY_NAMES` order) and impact (0-1)."""

    probs: tuple[float, ...]
    impact: float
    by: str  # "embedding" or "keywords"


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "


def keyword_reading(text: str, source: str) -> Reading:
    """The rule: keyword hits per category; none: the source's prior."""
    words = _words(text)
    hits = np.array([sum(f" {k} " in words for k in c.keywords) for c in CATEGORIES], dtype=float)
    probs = hits / hits.sum() if hits.sum() > 0 else np.array(_PRIOR[source])
    impact = min(1.0, 0.5 * sum(f" {w} " in words for w in _WIDE_WORDS))
    return Reading(tuple(float(p) for p in probs), impact, "keywords")


class TextReader:
    """Reads tickets' texts with the packaged MiniLM when it is installed (and `embed` is
    on), else with the keyword rule. Thread-safe; readings are cached by text."""

    def __init__(self, cache_dir: Path | None, *, embed: bool = True) -> None:
        self._cache_dir = cache_dir
        self._embed = embed and cache_dir is not None
        self._embedder: TextEmbedder | None = None
        self._loaded = False
        self._anchors: np.ndarray | None = None  # sentence embeddings, one row each
        self._cache: OrderedDict[tuple[str, str], Reading] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def embedder(self) -> TextEmbedder | None:
        if not self._loaded:
            with self._lock:
                if not self._loaded and self._embed and self._cache_dir is not None:
                    self._embedder = shared_embedder(self._cache_dir)
                    if self._embedder is not None:
                        sentences = [s for c in CATEGORIES for s in c.sentences]
                        self._anchors = self._embedder.embed([*sentences, *_WIDE, *_NARROW])
                self._loaded = True
        return self._embedder

    def read(self, text: str, source: str) -> Reading:
        return self.read_many([text], [source])[0]

    def read_many(self, texts: list[str], sources: list[str]) -> list[Reading]:
        """Readings of many texts (one embedding batch for those not cached)."""
        keys = list(zip(texts, sources, strict=True))
        with self._lock:
            found = {k: self._cache[k] for k in keys if k in self._cache}
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            fresh = self._read_fresh(missing)
            with self._lock:
                for k, r in zip(missing, fresh, strict=True):
                    self._cache[k] = r
                while len(self._cache) > _CACHE:
                    self._cache.popitem(last=False)
            found.update(zip(missing, fresh, strict=True))
        return [found[k] for k in keys]

    def _read_fresh(self, keys: list[tuple[str, str]]) -> list[Reading]:
        embedder = self.embedder
        if embedder is None or self._anchors is None:
            return [keyword_reading(t, s) for t, s in keys]
        blank = [i for i, (t, _) in enumerate(keys) if not t.strip()]
        vectors = embedder.embed([t for t, _ in keys])
        sims = vectors @ self._anchors.T
        per = len(CATEGORIES[0].sentences)
        n_cat = len(CATEGORIES) * per
        best = sims[:, :n_cat].reshape(len(keys), len(CATEGORIES), per).max(axis=2)
        logits = _SHARPNESS * (best - best.max(axis=1, keepdims=True))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        wide = sims[:, n_cat : n_cat + len(_WIDE)].max(axis=1)
        narrow = sims[:, n_cat + len(_WIDE) :].max(axis=1)
        impact = 1.0 / (1.0 + np.exp(-_SHARPNESS * (wide - narrow)))
        out = [
            Reading(tuple(float(p) for p in row), float(i), "embedding")
            for row, i in zip(probs, impact, strict=True)
        ]
        for i in blank:  # nothing to read: the rule's prior
            out[i] = keyword_reading(*keys[i])
        return out


def expected(probs: tuple[float, ...], attribute: str) -> float:
    """The probability-weighted mean of a category attribute (severity, handling_s)."""
    return math.fsum(
        p * float(getattr(c, attribute)) for p, c in zip(probs, CATEGORIES, strict=True)
    )
