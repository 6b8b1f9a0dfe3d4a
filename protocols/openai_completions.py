"""OpenAI legacy Completions (`POST /v1/completions`): a prompt string (or token ids) in, text out.

Kept because base-model and fill-in-the-middle workloads, evaluation harnesses and many
self-hosted clients still use it. OpenAI's default `max_tokens` here is 16, not "until done".
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from protocols.api import Api
from protocols.errors import bad_request
from protocols.text import estimate_tokens, split_text
from protocols.usage import UsagePeek, to_usage
from protocols.openai_common import OpenAIWire
from protocols.wire import Inbound, Peek, answer_check, convert, decode_json

DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for this endpoint

TokenIds = list[Annotated[int, Meta(ge=0)]]
# msgspec allows one array type per union: list items are checked for a single kind in `prompts`.
Prompt = str | list[str | Annotated[int, Meta(ge=0)] | TokenIds]


class StreamOptions(Struct, kw_only=True, omit_defaults=True):
    include_usage: bool | None = None


class CompletionRequest(Struct, kw_only=True, omit_defaults=True):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    prompt: Prompt
    suffix: str | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    best_of: Annotated[int, Meta(ge=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: bool | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None


def prompts(prompt: Any, param: str = "prompt") -> list[str | list[int]]:
    """The prompt as a list of prompts (a string, or token ids), as OpenAI batches them: a
    string, a list of strings, a list of token ids, or a list of token-id lists (never mixed)."""
    if isinstance(prompt, str):
        return [prompt]
    kinds = {type(item) for item in prompt}
    if kinds == {int}:
        return [list(prompt)]
    if len(kinds) > 1:
        raise bad_request(f"'{param}' must be a string, a list of strings, a list of token ids or a list of "
                          f"token-id lists, not a mix.", param=param)
    return list(prompt)


class _ChoicePeek(msgspec.Struct):
    text: str | None = None
    finish_reason: str | None = None


class _ChunkPeek(msgspec.Struct):
    choices: list[_ChoicePeek] = []
    usage: UsagePeek | None = None


_chunk_decoder = msgspec.json.Decoder(_ChunkPeek)


class CompletionsWire(OpenAIWire):
    api = Api.COMPLETIONS
    cacheable_streams = True
    check = staticmethod(answer_check("choices"))

    def decode(self, raw: bytes) -> Inbound:
        body = decode_json(raw)
        view = convert(body, CompletionRequest)
        batch = prompts(view.prompt)
        if not batch:
            raise bad_request("'prompt' must not be empty.", param="prompt")
        if view.best_of is not None and view.best_of < (view.n or 1):
            raise bad_request("best_of must be at least n.", param="best_of")
        text = "\n".join(p for p in batch if isinstance(p, str))
        n = (view.n or 1) * len(batch)
        return Inbound(
            api=self.api, body=body, view=view, model=view.model, stream=bool(view.stream),
            include_usage=bool(view.stream_options and view.stream_options.include_usage),
            output_cap=view.max_tokens, default_output=DEFAULT_MAX_TOKENS, n=n, messages=len(batch),
            prompt_tokens=3 + estimate_tokens(batch) + estimate_tokens(view.suffix),
            conversation={"messages": [{"role": "user", "content": text}]},
        )



    def peek(self, payload: bytes) -> Peek:
        try:
            chunk = _chunk_decoder.decode(payload)
        except msgspec.DecodeError:
            return Peek(valid=False)
        return Peek(usage=to_usage(chunk.usage), delivered=sum(1 for c in chunk.choices if c.text),
                    usage_only=chunk.usage is not None and not chunk.choices)



    def replay(self, body: bytes, include_usage: bool) -> list[bytes]:
        """A stored `text_completion` as the chunks a live stream sends (text pieces, then finish)."""
        doc = msgspec.json.decode(body)
        base = {"id": doc.get("id", ""), "object": "text_completion",
                "created": doc.get("created", int(time.time())), "model": doc.get("model", "")}
        out: list[bytes] = []

        def emit(choice: dict[str, Any]) -> None:
            chunk = {**base, "choices": [choice]}
            if include_usage:
                chunk["usage"] = None
            out.append(msgspec.json.encode(chunk))

        for choice in doc.get("choices") or []:
            index = choice.get("index", 0)
            for piece in split_text(choice.get("text") or ""):
                emit({"index": index, "text": piece, "logprobs": None, "finish_reason": None})
            emit({"index": index, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason") or "stop"})
        if include_usage:
            out.append(msgspec.json.encode({**base, "choices": [], "usage": doc.get("usage")}))
        return out

    def assemble(self, payloads: list[bytes]) -> bytes | None:
        """A finished stream as one `text_completion`; None unless every choice finished cleanly."""
        head: dict[str, Any] | None = None
        usage = None
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        for payload in payloads:
            try:
                chunk = msgspec.json.decode(payload)
            except msgspec.DecodeError:
                return None
            if not isinstance(chunk, dict) or "error" in chunk:
                return None
            head = head or chunk
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                index = choice.get("index", 0)
                texts.setdefault(index, []).append(choice.get("text") or "")
                finish[index] = choice.get("finish_reason") or finish.get(index)
        if head is None or not texts or any(finish.get(i) is None for i in texts):
            return None
        document: dict[str, Any] = {
            "id": head.get("id", ""), "object": "text_completion", "created": head.get("created", int(time.time())),
            "model": head.get("model", ""),
            "choices": [{"index": i, "text": "".join(texts[i]), "logprobs": None, "finish_reason": finish[i]}
                        for i in sorted(texts)],
        }
        if usage is not None:
            document["usage"] = usage
        return msgspec.json.encode(document)


WIRE = CompletionsWire()
