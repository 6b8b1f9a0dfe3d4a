"""The text embeddings a learned difficulty model can read, built from the kind its file records.

Why a registry and not one embedder: the choice is a measured trade (bench/router_cv.py).
`static` (MiniLM's word-piece table, no encoder, ~0.3 ms) ranks real chat traffic worst; the
contextual MiniLM sentence embedding ranks it better and is the forward pass the semantic cache
already runs for the same text (its memo is keyed by token ids, so a request both ask about is
encoded once); `static+minilm` concatenates both and ranked best. A model file names its kind and
its word-piece window, and the scorer rebuilds exactly that at load time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Embed = Callable[[list[str]], np.ndarray]

KINDS = ("static", "minilm", "static+minilm")
# The head of the user's turn that is embedded, in characters, before the tokenizer cuts it to
# the model's word-piece window: enough for 128-256 word pieces of prose, and a bound on the
# tokenizer's work for a pasted 100 kB document.
EMBED_CHARS = 1200


def name_of(kind: str, tokens: int) -> str:
    return {"static": f"all-MiniLM-L6-v2 static word-piece mean ({tokens} word pieces)",
            "minilm": f"all-MiniLM-L6-v2 ({tokens} word pieces)",
            "static+minilm": f"all-MiniLM-L6-v2 static word-piece mean + sentence embedding ({tokens} word pieces)",
            }[kind]


def _static(tokens: int) -> Embed:
    from gateway.routing.static_embed import MAX_TOKENS, StaticEmbedder, shared_static

    return shared_static() if tokens == MAX_TOKENS else StaticEmbedder(max_tokens=tokens)


def _minilm(tokens: int, memo: bool) -> Embed:
    if not memo:
        from cache.embedder import Embedder

        return Embedder(memo_size=0).head_embedder(tokens)
    from gateway.routing.knn import minilm_embed

    return minilm_embed(tokens)


def build(kind: str, tokens: int = 64, *, memo: bool = True) -> Embed:
    """The embed function for `kind` over the head `tokens` word pieces of each text. `memo=False`
    (benches) uses a private MiniLM without the process-wide memo, whose hits would fake latency."""
    if kind not in KINDS:
        raise ValueError(f"unknown embedder kind {kind!r} (one of {', '.join(KINDS)})")
    if kind == "static":
        return _static(tokens)
    if kind == "minilm":
        return _minilm(tokens, memo)
    static, contextual = _static(tokens), _minilm(tokens, memo)

    def both(texts: list[str]) -> np.ndarray:
        return np.hstack([np.asarray(static(texts), dtype=np.float32), np.asarray(contextual(texts), dtype=np.float32)])

    return both
