"""What a step hands back per sequence, and how generated tokens become text and finish reasons.

Tokens are applied one at a time (a speculative step can bring several): each may end the
sequence (EOS, stop token id, max_tokens, max_model_len, a stop string); tokens after the one
that ended it are dropped. Text is detokenized incrementally and, while a stop string could still
be forming, held back until the request ends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .logprobs import TokenLogprob
from .sequence import Sequence


@dataclass
class RequestOutput:
    request_id: str                    # the request (all n choices share it)
    new_token_ids: list[int]
    delta_text: str
    finished: bool                     # this choice is done
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    seq: Sequence | None = None
    index: int = 0                     # choice index (n > 1)
    request_finished: bool = False     # every choice of the request is done (set by the engine)
    logprobs: list[TokenLogprob] = field(default_factory=list)   # one per visible new token


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: set[int], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def apply(self, seq: Sequence, tokens: list[int], logprobs: list[TokenLogprob]) -> RequestOutput:
        """Append tokens until one finishes the sequence; returns the step's output for it."""
        p = seq.params
        reason, shown, lps = None, [], []
        for tok, lp in zip(tokens, logprobs or [None] * len(tokens)):
            seq.token_ids.append(tok)
            hidden = (not p.ignore_eos and tok in self.eos_token_ids) or tok in p.stop_token_ids
            if hidden:
                reason = "stop"
            else:
                shown.append(tok)
                lps += [lp] if lp is not None else []
                if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
                    reason = "length"
                if p.detokenize:
                    self._detokenize(seq)
                    reason = self._stop_string(seq) or reason
            if reason is not None:
                break
        if reason is not None:
            seq.finish_reason = reason
            seq.finished_time = time.monotonic()
        upto = len(seq.output_text)   # emit text, holding back a possible partial stop string
        if reason is None and p.stop:
            upto = max(seq.emitted_text_len, upto - (max(len(s) for s in p.stop) - 1))
        delta = seq.output_text[seq.emitted_text_len:upto]
        seq.emitted_text_len = upto
        return RequestOutput(seq.group_id, shown, delta, reason is not None, reason, seq.num_prompt_tokens,
                             seq.num_cached_tokens, seq.num_output_tokens, seq, seq.index, logprobs=lps)

    @staticmethod
    def _stop_string(seq: Sequence) -> str | None:
        stops = seq.params.stop
        if not stops:
            return None
        start = max(0, seq.emitted_text_len - max(len(s) for s in stops))
        hits = [i for i in (seq.output_text.find(s, start) for s in stops) if i >= 0]
        if not hits:
            return None
        seq.output_text = seq.output_text[:min(hits)]
        return "stop"

    def _detokenize(self, seq: Sequence) -> None:
        out = seq.output_token_ids
        dec = self.tokenizer.decode
        prefix = dec(out[seq.prefix_offset:seq.read_offset], skip_special_tokens=True)
        full = dec(out[seq.prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            seq.output_text += full[len(prefix):]
            seq.prefix_offset = seq.read_offset
            seq.read_offset = len(out)
