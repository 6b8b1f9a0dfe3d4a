"""Log-probabilities of generated tokens, from the model's own distribution.

OpenAI reports `log_softmax` of the raw logits (before temperature, top-k or top-p), so this is
computed from the same logits rows the sampler used, not from the sampling distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)   # k most likely token ids -> logprob, best first


@torch.inference_mode()
def compute(logits: torch.Tensor, rows: list[int], tokens: list[int], num_top: list[int]) -> list[TokenLogprob]:
    """One TokenLogprob per (logits row, chosen token, how many alternatives) triple."""
    if not rows:
        return []
    lp = torch.log_softmax(logits[rows].float(), dim=-1)
    chosen = lp.gather(1, torch.tensor(tokens, device=lp.device)[:, None]).squeeze(1).tolist()
    k = max(num_top)
    top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
    top_v, top_i = top_v.tolist(), top_i.tolist()
    return [TokenLogprob(t, c, dict(zip(ids[:n], vals[:n])))
            for t, c, ids, vals, n in zip(tokens, chosen, top_i, top_v, num_top)]
