"""The known template nearest to a new one, by meaning: what an unseen line is most like.

A template never seen before says little by its id. Embedded with the packaged MiniLM
(`aiassist.text`, the `text` extra) and compared with the log's known templates, it can be
told to be "like `Connection reset by peer <IP>`" or like an error the log already has,
which is where an operator looks first. Known templates are embedded once each; nothing
is downloaded. Without the extra, `nearest` answers None and hints go without.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from aiassist.text import TextEmbedder, shared_embedder

__all__ = ["SimilarTemplates"]


class SimilarTemplates:
    def __init__(self, cache_dir: Path) -> None:
        self._cache_dir = cache_dir
        self._embedder: TextEmbedder | None = None
        self._loaded = False
        self._vectors: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def nearest(self, text: str, known: Mapping[int, str]) -> tuple[int, float] | None:
        """The id of the known template nearest to `text`, and its cosine similarity."""
        embedder = self._embedder_once()
        if embedder is None or not known:
            return None
        with self._lock:
            missing = [t for t in known if t not in self._vectors]
            if missing:
                vectors = embedder.embed([known[t] for t in missing])
                self._vectors.update(zip(missing, vectors, strict=True))
            ids = list(known)
            matrix = np.stack([self._vectors[t] for t in ids])
        similarity = matrix @ embedder.embed([text])[0]
        best = int(np.argmax(similarity))
        return ids[best], float(similarity[best])

    def _embedder_once(self) -> TextEmbedder | None:
        with self._lock:
            if not self._loaded:
                self._embedder = shared_embedder(self._cache_dir)
                self._loaded = True
            return self._embedder
