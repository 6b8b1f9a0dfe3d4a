"""N-gram (prompt-lookup) drafting for speculative decoding: no draft model.

The last n tokens (n = max_n down to min_n) are looked up in the sequence so far (prompt and
output); the tokens that followed their earliest occurrence are the draft. It pays off where the
output copies the input (code edits, extraction, quotes, RAG answers). The engine verifies all
drafts of a step in one forward pass; `Sampler.verify` keeps the right ones.
`NoDrafts` is the proposer when speculation is off.
"""
from __future__ import annotations

from .sequence import Sequence


class NoDrafts:
    max_k = 0

    def propose(self, seq: Sequence, limit: int) -> list[int]:
        return []


class NgramIndex:
    """Per-sequence map from each n-gram (that has a successor) to its earliest start, grown
    incrementally as tokens are appended, so a lookup costs a few dict probes, not a scan of the
    whole context (this runs for every decode of every step)."""

    def __init__(self) -> None:
        self.first: dict[tuple[int, ...], int] = {}
        self.done = 0          # n-grams ending (exclusive) at or before this position are indexed

    def update(self, toks: list[int], ns: range) -> None:
        first = self.first
        for end in range(self.done + 1, len(toks)):        # the token at `end` is the successor
            for n in ns:
                if end >= n:
                    first.setdefault(tuple(toks[end - n:end]), end - n)
        self.done = max(self.done, len(toks) - 1)


class NgramProposer:
    def __init__(self, max_k: int, max_n: int = 4, min_n: int = 2):
        self.max_k = max_k
        self.ns = range(min_n, max_n + 1)

    def propose(self, seq: Sequence, limit: int) -> list[int]:
        """Up to min(max_k, limit) drafted tokens continuing seq.token_ids."""
        k = min(self.max_k, limit)
        toks = seq.token_ids
        if k <= 0:
            return []
        if seq.draft_state is None:
            seq.draft_state = NgramIndex()
        index = seq.draft_state
        index.update(toks, self.ns)
        for n in reversed(self.ns):                         # longest suffix first
            if n < len(toks):
                start = index.first.get(tuple(toks[-n:]))
                if start is not None:
                    return toks[start + n:start + n + k]
        return []


def make_proposer(k: int, min_n: int = 2, max_n: int = 4) -> NgramProposer | NoDrafts:
    return NgramProposer(k, max_n=max_n, min_n=min_n) if k > 0 else NoDrafts()
