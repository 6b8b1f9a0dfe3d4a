"""Token sampling: greedy, temperature, top-k, top-p; per-request seeds.

Batched in torch; the only per-row Python work is drawing one uniform number from each
sequence's own `random.Random` (seeded requests are reproducible whatever else is in the batch).
"""
from __future__ import annotations

import random

import torch

from .sequence import Sequence


class Sampler:
    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def _rng(self, seq: Sequence) -> random.Random:
        if seq.params.seed is None:
            return self.rng
        if seq.rng is None:
            seq.rng = random.Random(seq.params.seed)
        return seq.rng  # type: ignore[return-value]

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits: [N, V] float32, one row per sequence. Returns one token id per row."""
        n = len(seqs)
        if n == 0:
            return []
        out = logits.argmax(dim=-1).tolist()
        rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if not rows:
            return out
        lg = logits[rows] if len(rows) < n else logits
        ps = [seqs[i].params for i in rows]
        temp = torch.tensor([p.temperature for p in ps], dtype=lg.dtype, device=lg.device)
        probs = torch.softmax(lg / temp[:, None], dim=-1)
        sp, si = probs.sort(dim=-1, descending=True)
        V = sp.shape[1]
        ks = [p.top_k if 0 < p.top_k < V else V for p in ps]
        if min(ks) < V:
            rank = torch.arange(V, device=lg.device)[None, :]
            sp = sp.masked_fill(rank >= torch.tensor(ks, device=lg.device)[:, None], 0.0)
        tps = [p.top_p for p in ps]
        if min(tps) < 1.0:
            cum = sp.cumsum(dim=-1)
            # drop a token when the mass before it already reaches top_p (the first token always stays)
            drop = (cum - sp) >= torch.tensor(tps, dtype=sp.dtype, device=lg.device)[:, None]
            sp = sp.masked_fill(drop, 0.0)
        cdf = sp.cumsum(dim=-1)
        u = torch.tensor([self._rng(seqs[i]).random() for i in rows], dtype=cdf.dtype, device=lg.device)
        pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous(), right=True).clamp_(max=V - 1)
        tok = si.gather(1, pick).squeeze(1).tolist()
        for j, i in enumerate(rows):
            out[i] = tok[j]
        return out
