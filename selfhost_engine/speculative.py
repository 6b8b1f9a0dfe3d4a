"""N-gram (prompt-lookup) drafting for speculative decoding: no draft model.

The last n tokens (n = max_n down to min_n) are looked up in the sequence so far (prompt and
output); the tokens that followed their earliest occurrence are the draft. It pays off where the
output copies the input (code edits, extraction, quotes, RAG answers). The engine verifies all
drafts of a step in one forward pass; `Sampler.verify` keeps the right ones.
`NoDrafts` is the proposer when speculation is off.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .sequence import Sequence


class NoDrafts:
    max_k = 0

    def propose(self, seq: Sequence, limit: int) -> list[int]:
        return []


class NgramProposer:
    def __init__(self, max_k: int, max_n: int = 4, min_n: int = 2):
        self.max_k = max_k
        self.max_n = max_n
        self.min_n = min_n

    def propose(self, seq: Sequence, limit: int) -> list[int]:
        """Up to min(max_k, limit) drafted tokens continuing seq.token_ids."""
        k = min(self.max_k, limit)
        toks = seq.token_ids
        if k <= 0 or len(toks) < self.min_n + 1:
            return []
        arr = np.asarray(toks, dtype=np.int64)
        for n in range(min(self.max_n, len(arr) - 1), self.min_n - 1, -1):
            windows = sliding_window_view(arr[:-1], n)           # every n-gram that has a successor
            hits = np.flatnonzero((windows == arr[-n:]).all(axis=1))
            if hits.size:
                start = int(hits[0]) + n
                return arr[start:start + k].tolist()
        return []


def make_proposer(k: int, min_n: int = 2, max_n: int = 4) -> NgramProposer | NoDrafts:
    return NgramProposer(k, max_n=max_n, min_n=min_n) if k > 0 else NoDrafts()
