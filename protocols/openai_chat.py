"""OpenAI Chat Completions (`POST /v1/chat/completions`): request structs, stream peeks,
replay of a stored answer as chunks, and assembly of chunks into one answer.

The request is decoded once into a plain dict (kept for forwarding, so fields we do not model
still reach OpenAI-compatible upstreams, as the SDK's `extra_body` does) and validated against
these structs, which is where types, ranges and required fields are enforced.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from protocols.api import Api
from protocols.errors import bad_request
from protocols.text import estimate_tokens, split_text
from protocols.usage import UsagePeek, to_usage
from protocols.openai_common import OpenAIWire
from protocols.wire import Inbound, Peek, answer_check, convert, decode_json

class _Wire(Struct, kw_only=True, omit_defaults=True):
    pass


class ImageURL(_Wire, kw_only=True):
    url: Annotated[str, Meta(min_length=1)]
    detail: str | None = None


class ContentPart(_Wire, tag_field="type", forbid_unknown_fields=False):
    pass


class TextPart(ContentPart, tag="text", kw_only=True):
    text: str


class ImagePart(ContentPart, tag="image_url", kw_only=True):
    image_url: ImageURL


class InputAudioPart(ContentPart, tag="input_audio", kw_only=True):
    input_audio: dict[str, Any]


class FilePart(ContentPart, tag="file", kw_only=True):
    file: dict[str, Any]


class RefusalPart(ContentPart, tag="refusal", kw_only=True):
    refusal: str


Content = str | list[TextPart | ImagePart | InputAudioPart | FilePart | RefusalPart]


class FunctionCall(_Wire, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    arguments: str


class CustomCall(_Wire, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    input: str


class ToolCall(_Wire, kw_only=True):
    """A function call, or a call to a custom (free-form input) tool: `type` says which member is set."""

    id: str
    type: Literal["function", "custom"] = "function"
    function: FunctionCall | None = None
    custom: CustomCall | None = None


class Message(_Wire, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class FunctionDef(_Wire, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomDef(_Wire, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    format: dict[str, Any] | None = None  # {"type": "text"} or {"type": "grammar", "grammar": {...}}


class Tool(_Wire, kw_only=True):
    """A function tool, or a custom tool (free-form text input, e.g. a grammar-constrained patch)."""

    type: Literal["function", "custom"] = "function"
    function: FunctionDef | None = None
    custom: CustomDef | None = None


class NamedFunction(_Wire, kw_only=True):
    name: str


class NamedToolChoice(_Wire, kw_only=True):
    """A named function or custom tool, or `allowed_tools` (a subset, with mode auto/required)."""

    type: Literal["function", "custom", "allowed_tools"] = "function"
    function: NamedFunction | None = None
    custom: NamedFunction | None = None
    allowed_tools: dict[str, Any] | None = None


def check_tool_members(view: ChatCompletionRequest) -> None:
    """Each tool, tool call and named tool choice carries the member its `type` names (the
    schema above keeps both optional so one struct reads either kind)."""
    for number, tool in enumerate(view.tools or ()):
        _require_member(tool, f"tools[{number}]")
    for number, message in enumerate(view.messages):
        for position, call in enumerate(message.tool_calls or ()):
            _require_member(call, f"messages[{number}].tool_calls[{position}]")
    if isinstance(view.tool_choice, NamedToolChoice):
        _require_member(view.tool_choice, "tool_choice")


def _require_member(tagged: Tool | ToolCall | NamedToolChoice, where: str) -> None:
    if getattr(tagged, tagged.type) is None:
        param = f"{where}.{tagged.type}"
        raise bad_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


class JsonSchemaFormat(_Wire, kw_only=True):
    name: str
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Wire, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Wire, kw_only=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


Probability = Annotated[float, Meta(ge=0, le=1)]


class ChatCompletionRequest(_Wire, kw_only=True):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None

    @property
    def output_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens



def _split_args(arguments: str, target: int = 24) -> list[str]:
    return [arguments[i : i + target] for i in range(0, len(arguments), target)] or [""]


def replay_chunks(
    completion_body: bytes,
    include_usage: bool,
    *,
    id: str | None = None,
    created: int | None = None,
    usage: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """A cached `chat.completion` as the `chat.completion.chunk` payloads a live OpenAI stream
    sends (the part after `data: `; the caller adds SSE framing and `[DONE]`).

    Per choice: a role chunk (`content: ""`), content pieces (token by token when logprobs
    were cached, so each chunk carries its own logprobs), a refusal, tool-call deltas (first
    index/id/type/name with empty arguments, then argument pieces), then a chunk with an empty
    delta and the finish_reason. With `include_usage`, every chunk has `usage: null` and a last
    chunk with `choices: []` carries the usage (`usage` overrides the cached one). `id` and
    `created` override the cached identity; id/model/created are the same on every chunk.
    """
    doc = msgspec.json.decode(completion_body)
    base: dict[str, Any] = {
        "id": id if id is not None else doc.get("id", ""),
        "object": "chat.completion.chunk",
        "created": created if created is not None else doc.get("created", int(time.time())),
        "model": doc.get("model", ""),
    }
    for extra in ("service_tier", "system_fingerprint"):
        if extra in doc:
            base[extra] = doc[extra]

    out: list[bytes] = []

    def emit(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> None:
        chunk = dict(base)
        chunk["choices"] = [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
        if include_usage:
            chunk["usage"] = None
        out.append(msgspec.json.encode(chunk))

    for choice in doc.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        content = message.get("content")
        tool_calls = message.get("tool_calls") or []
        role_delta: dict[str, Any] = {"role": message.get("role") or "assistant"}
        # A tool-call-only answer opens with role, null content and the first call (as OpenAI
        # streams it); anything else opens with role and empty content.
        merge_role = content is None and bool(tool_calls)
        if merge_role:
            role_delta["content"] = None
        else:
            role_delta.update(content="", refusal=None)
            emit(index, role_delta)
        lp = choice.get("logprobs") or {}
        token_lps = lp.get("content") if isinstance(lp, dict) else None
        if content and token_lps and "".join(t.get("token", "") for t in token_lps) == content:
            for t in token_lps:
                emit(index, {"content": t.get("token", "")}, logprobs={"content": [t], "refusal": None})
        elif content:
            for piece in split_text(content):
                emit(index, {"content": piece})

        refusal = message.get("refusal")
        if refusal:
            for piece in split_text(refusal):
                emit(index, {"refusal": piece})

        for ti, call in enumerate(tool_calls):
            fn = call.get("function") or {}
            header = {
                "tool_calls": [
                    {
                        "index": ti,
                        "id": call.get("id"),
                        "type": call.get("type", "function"),
                        "function": {"name": fn.get("name"), "arguments": ""},
                    }
                ]
            }
            if ti == 0 and merge_role:
                emit(index, {**role_delta, **header})
            else:
                emit(index, header)
            arguments = fn.get("arguments") or ""
            if arguments:
                for piece in _split_args(arguments):
                    emit(index, {"tool_calls": [{"index": ti, "function": {"arguments": piece}}]})

        emit(index, {}, finish_reason=choice.get("finish_reason") or "stop")

    if include_usage:
        chunk = dict(base)
        chunk["choices"] = []
        chunk["usage"] = dict(usage) if usage is not None else doc.get("usage")
        out.append(msgspec.json.encode(chunk))
    return out


def assemble_completion(payloads: list[bytes]) -> bytes | None:
    """The inverse of `replay_chunks`: a finished stream's chunk payloads as one `chat.completion`,
    so streamed answers can be cached too. None when the stream is not a complete, cacheable
    answer (no choices, a choice without a finish_reason, an in-band error, unparsable JSON).
    """
    head: dict[str, Any] | None = None
    usage = None
    choices: dict[int, dict[str, Any]] = {}
    for payload in payloads:
        try:
            chunk = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return None
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        head = head or chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        for delta_choice in chunk.get("choices") or []:
            index = delta_choice.get("index", 0)
            state = choices.setdefault(index, {"role": "assistant", "content": [], "refusal": [], "tools": {},
                                               "finish_reason": None})
            delta = delta_choice.get("delta") or {}
            if delta.get("role"):
                state["role"] = delta["role"]
            if delta.get("content"):
                state["content"].append(delta["content"])
            if delta.get("refusal"):
                state["refusal"].append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                slot = state["tools"].setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                                         "name": None, "arguments": []})
                slot["id"] = call.get("id") or slot["id"]
                slot["type"] = call.get("type") or slot["type"]
                function = call.get("function") or {}
                slot["name"] = function.get("name") or slot["name"]
                if function.get("arguments"):
                    slot["arguments"].append(function["arguments"])
            if delta_choice.get("finish_reason"):
                state["finish_reason"] = delta_choice["finish_reason"]
    if head is None or not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None
    out_choices = []
    for index in sorted(choices):
        state = choices[index]
        message: dict[str, Any] = {"role": state["role"],
                                   "content": "".join(state["content"]) if state["content"] or not state["tools"] else None,
                                   "refusal": "".join(state["refusal"]) or None}
        if state["tools"]:
            message["tool_calls"] = [
                {"id": t["id"], "type": t["type"], "function": {"name": t["name"], "arguments": "".join(t["arguments"])}}
                for _, t in sorted(state["tools"].items())
            ]
        out_choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": state["finish_reason"]})
    document: dict[str, Any] = {"id": head.get("id", ""), "object": "chat.completion",
                                "created": head.get("created", int(time.time())), "model": head.get("model", ""),
                                "choices": out_choices}
    for extra in ("service_tier", "system_fingerprint"):
        if head.get(extra) is not None:
            document[extra] = head[extra]
    if usage is not None:
        document["usage"] = usage
    return msgspec.json.encode(document)


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Cheap upper-ish estimate of prompt tokens: per-message framing, content, tool calls, tools."""
    total = 3
    for message in body.get("messages") or ():
        total += 4
        if isinstance(message, Mapping):
            total += estimate_tokens(message.get("content"))
            total += sum(estimate_tokens(call) for call in message.get("tool_calls") or ())
    return total + sum(estimate_tokens(tool) for tool in body.get("tools") or ())


class _DeltaPeek(msgspec.Struct):
    content: str | None = None
    tool_calls: list[msgspec.Raw] | None = None


class _ChoicePeek(msgspec.Struct):
    delta: _DeltaPeek | None = None
    finish_reason: str | None = None


class _ChunkPeek(msgspec.Struct):
    choices: list[_ChoicePeek] = []
    usage: UsagePeek | None = None


_chunk_decoder = msgspec.json.Decoder(_ChunkPeek)


class ChatWire(OpenAIWire):
    api = Api.CHAT
    cacheable_streams = True
    check = staticmethod(answer_check("choices"))

    def decode(self, raw: bytes) -> Inbound:
        body = decode_json(raw)
        view = convert(body, ChatCompletionRequest)
        check_tool_members(view)
        options = view.stream_options
        return Inbound(
            api=self.api, body=body, view=view, model=view.model, stream=bool(view.stream),
            include_usage=bool(options and options.include_usage),
            output_cap=view.output_cap,
            output_param="max_completion_tokens" if view.max_completion_tokens is not None else "max_tokens",
            n=view.n or 1, messages=len(view.messages), prompt_tokens=estimate_prompt_tokens(body),
            conversation=body,
        )



    def peek(self, payload: bytes) -> Peek:
        try:
            chunk = _chunk_decoder.decode(payload)
        except msgspec.DecodeError:
            return Peek(valid=False)
        delivered = sum(1 for c in chunk.choices if c.delta is not None and (c.delta.content or c.delta.tool_calls))
        return Peek(usage=to_usage(chunk.usage), delivered=delivered,
                    usage_only=chunk.usage is not None and not chunk.choices)



    def replay(self, body: bytes, include_usage: bool) -> list[bytes]:
        return replay_chunks(body, include_usage)

    def assemble(self, payloads: list[bytes]) -> bytes | None:
        return assemble_completion(payloads)


WIRE = ChatWire()
