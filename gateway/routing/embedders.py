"""The text embeddings a learned difficulty model can read, built from the kind its file records.

Why a registry and not one embedder: the choice is a measured trade (bench/router_cv.py, on real
chat traffic). `static` (MiniLM's word-piece table, no encoder, ~0.3 ms) ranks worst; the frozen
MiniLM sentence embedding (`minilm`: the semantic cache's own forward pass, memoised by token ids,
so a request both ask about is encoded once) ranks better, and `static+minilm` better still;
MiniLM fine-tuned on the labelled traffic (`finetuned`, `finetune.py`) ranks best, at the price of
a forward pass of its own (over the 5 ms budget on one core: opt-in, not the default). A model
file names its kind, its word-piece window and (fine-tuned) its encoder folder, and the scorer
rebuilds exactly that at load time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

Embed = Callable[[list[str]], np.ndarray]

KINDS = ("static", "minilm", "static+minilm", "finetuned")
# Where `python -m gateway.routing.finetune` writes MiniLM fine-tuned on the router's labelled
# traffic (a sentence-transformers folder, loaded like MiniLM itself by `cache.embedder.Embedder`);
# a model trained on it records the folder it used. Not shipped: see `finetune.py`.
ENCODER_DIR = Path.home() / ".cache" / "hybrid-gateway" / "router-encoder"
# The head of the user's turn that is embedded, in characters, before the tokenizer cuts it to
# the model's word-piece window: enough for 128-256 word pieces of prose, and a bound on the
# tokenizer's work for a pasted 100 kB document.
EMBED_CHARS = 1200


def name_of(kind: str, tokens: int) -> str:
    return {"static": f"all-MiniLM-L6-v2 static word-piece mean ({tokens} word pieces)",
            "minilm": f"all-MiniLM-L6-v2 ({tokens} word pieces)",
            "static+minilm": f"all-MiniLM-L6-v2 static word-piece mean + sentence embedding ({tokens} word pieces)",
            "finetuned": f"all-MiniLM-L6-v2 fine-tuned on the router's labelled traffic ({tokens} word pieces)",
            }[kind]


def _static(tokens: int) -> Embed:
    from gateway.routing.static_embed import shared_static

    return shared_static(tokens)


def _minilm(tokens: int, memo: bool) -> Embed:
    if not memo:
        from cache.embedder import Embedder

        return Embedder(memo_size=0).head_embedder(tokens)
    from gateway.routing.knn import minilm_embed

    return minilm_embed(tokens)


_tuned: dict[str, object] = {}
_tuned_lock = threading.Lock()


def _finetuned(tokens: int, memo: bool, encoder: str | Path | None) -> Embed:
    """One fine-tuned encoder per folder and process (like MiniLM's `get_embedder`), loaded on first use."""
    from cache.embedder import Embedder

    folder = str(encoder or ENCODER_DIR)
    if not memo:
        return Embedder(model_path=folder, memo_size=0).head_embedder(tokens)
    with _tuned_lock:
        embedder = _tuned.get(folder)
        if embedder is None:
            embedder = _tuned[folder] = Embedder(model_path=folder, memo_size=256)
    return embedder.head_embedder(tokens)  # type: ignore[attr-defined]


def build(kind: str, tokens: int = 64, *, memo: bool = True, encoder: str | Path | None = None) -> Embed:
    """The embed function for `kind` over the head `tokens` word pieces of each text. `memo=False`
    (benches) uses a private MiniLM without the process-wide memo, whose hits would fake latency;
    `encoder` is the fine-tuned folder a `finetuned` model was trained with."""
    if kind not in KINDS:
        raise ValueError(f"unknown embedder kind {kind!r} (one of {', '.join(KINDS)})")
    if kind == "static":
        return _static(tokens)
    if kind == "minilm":
        return _minilm(tokens, memo)
    if kind == "finetuned":
        return _finetuned(tokens, memo, encoder)
    static, contextual = _static(tokens), _minilm(tokens, memo)

    def both(texts: list[str]) -> np.ndarray:
        return np.hstack([np.asarray(static(texts), dtype=np.float32), np.asarray(contextual(texts), dtype=np.float32)])

    return both
