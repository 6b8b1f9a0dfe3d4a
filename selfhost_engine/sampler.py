"""Token sampling: greedy, temperature, top-k, top-p; per-request seeds; verification of drafts.

Batched in torch; the only per-row Python work is drawing one uniform number from each
sequence's own `random.Random` (seeded requests are reproducible whatever else is in the batch).
Drafted tokens (speculative decoding) are verified with the standard rule for a deterministic
draft: greedy keeps a draft while it equals the argmax; with temperature a draft d is kept with
probability p(d), and on the first rejection the token is drawn from p with d removed (the
residual max(0, p - q) normalised), so the output distribution is exactly the sampler's.
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
        if seq.rng is None:   # the n choices of a seeded request each get their own stream
            seq.rng = random.Random(seq.params.seed if seq.index == 0 else f"{seq.params.seed}:{seq.index}")
        return seq.rng  # type: ignore[return-value]

    @torch.inference_mode()
    def _dist(self, logits: torch.Tensor, ps: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampling distribution per row, sorted: (probs, token ids); probs may not sum to 1."""
        temp = torch.tensor([p.temperature for p in ps], dtype=logits.dtype, device=logits.device)
        probs = torch.softmax(logits / temp[:, None], dim=-1)
        sp, si = probs.sort(dim=-1, descending=True)
        V = sp.shape[1]
        ks = [p.top_k if 0 < p.top_k < V else V for p in ps]
        if min(ks) < V:
            rank = torch.arange(V, device=logits.device)[None, :]
            sp = sp.masked_fill(rank >= torch.tensor(ks, device=logits.device)[:, None], 0.0)
        tps = [p.top_p for p in ps]
        if min(tps) < 1.0:
            cum = sp.cumsum(dim=-1)
            # drop a token when the mass before it already reaches top_p (the first token always stays)
            drop = (cum - sp) >= torch.tensor(tps, dtype=sp.dtype, device=logits.device)[:, None]
            sp = sp.masked_fill(drop, 0.0)
        return sp, si

    @staticmethod
    def _draw(sp: torch.Tensor, si: torch.Tensor, u: float) -> int:
        cdf = sp.cumsum(dim=-1)
        pick = torch.searchsorted(cdf, (u * cdf[-1]).reshape(1), right=True).clamp_(max=sp.shape[0] - 1)
        return int(si[pick])

    @torch.inference_mode()
    def verify(self, logits: torch.Tensor, seqs: list[Sequence], drafts: list[list[int]]) -> list[list[int]]:
        """Rows laid out per sequence: 1 + len(drafts[i]) rows each. Returns, per sequence, the
        kept drafts followed by one sampled token (so at least one token)."""
        if not any(drafts):
            return [[t] for t in self(logits, seqs)]
        starts, r = [], 0
        for d in drafts:
            starts.append(r)
            r += 1 + len(d)
        greedy_tok = logits.argmax(dim=-1).tolist()
        out: list[list[int]] = []
        for seq, d, r0 in zip(seqs, drafts, starts):
            if seq.params.greedy:
                j = 0
                while j < len(d) and d[j] == greedy_tok[r0 + j]:
                    j += 1
                out.append(d[:j] + [greedy_tok[r0 + j]])
                continue
            sp, si = self._dist(logits[r0:r0 + len(d) + 1], [seq.params] * (len(d) + 1))
            rng, toks = self._rng(seq), []
            for j in range(len(d) + 1):
                if j == len(d):
                    toks.append(self._draw(sp[j], si[j], rng.random()))
                    break
                hit = si[j] == d[j]
                if rng.random() * float(sp[j].sum()) < float(sp[j][hit].sum()):
                    toks.append(d[j])
                    continue
                toks.append(self._draw(sp[j].masked_fill(hit, 0.0), si[j], rng.random()))
                break
            out.append(toks)
        return out

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
        sp, si = self._dist(lg, [seqs[i].params for i in rows])
        V = sp.shape[1]
        cdf = sp.cumsum(dim=-1)
        u = torch.tensor([self._rng(seqs[i]).random() for i in rows], dtype=cdf.dtype, device=lg.device)
        pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous(), right=True).clamp_(max=V - 1)
        tok = si.gather(1, pick).squeeze(1).tolist()
        for j, i in enumerate(rows):
            out[i] = tok[j]
        return out
