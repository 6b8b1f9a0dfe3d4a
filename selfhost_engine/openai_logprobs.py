"""Token log-probabilities in OpenAI's two wire shapes.

chat:        {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
              "refusal": None}
completions: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}], "text_offset": [...]}

A token's text is the tokenizer's decoding of that one token (as vLLM reports it); `bytes` are
its UTF-8 bytes. `text_offset` counts characters from the start of the completion.
"""
from __future__ import annotations

from .logprobs import TokenLogprob


def _text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _entry(tokenizer, token_id: int, logprob: float) -> dict:
    s = _text(tokenizer, token_id)
    return {"token": s, "logprob": logprob, "bytes": list(s.encode("utf-8"))}


def chat_logprobs(tokenizer, items: list[TokenLogprob]) -> dict:
    return {"content": [{**_entry(tokenizer, t.token_id, t.logprob),
                         "top_logprobs": [_entry(tokenizer, i, v) for i, v in t.top.items()]} for t in items],
            "refusal": None}


def completion_logprobs(tokenizer, items: list[TokenLogprob], offset: int = 0) -> dict:
    tokens = [_text(tokenizer, t.token_id) for t in items]
    offsets = []
    for s in tokens:
        offsets.append(offset)
        offset += len(s)
    return {"tokens": tokens, "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [{_text(tokenizer, i): v for i, v in t.top.items()} for t in items],
            "text_offset": offsets}
