"""Anthropic Messages (`POST /v1/messages`): callers such as Claude Code and the Anthropic SDKs.

The request is validated loosely on purpose: to an Anthropic target it is forwarded verbatim
(only `model` rewritten), so fields this module does not know (new betas, server tools, thinking
options, `cache_control` with `ttl`) must survive. Streams are relayed event for event as named
SSE events (`event: <type>`); usage is read from `message_start` (input, cache reads and writes)
and `message_delta` (output, cumulative).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from protocols.anthropic_chat import message_usage
from protocols.api import Api
from protocols.errors import anthropic_error_body
from protocols.sse import named
from protocols.text import estimate_tokens, split_text, text_of
from protocols.usage import Usage
from protocols.wire import Inbound, Peek, answer_check, convert, decode_json

# Caller headers an Anthropic target must see (API version and beta features); forwarded as sent.
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


def forwarded_headers(headers) -> dict[str, str]:
    return {k: headers[k] for k in FORWARDED_HEADERS if k in headers}


class _Loose(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    pass


class Message(_Loose):
    # Any role: new ones (Claude Code's `system` turns inside `messages`) reach an Anthropic
    # target verbatim; a translator refuses what it has no equivalent for.
    role: Annotated[str, Meta(min_length=1)]
    content: str | list[dict[str, Any]]


class MessagesRequest(_Loose):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)]
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class CountTokensRequest(_Loose):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


def system_text(system: Any) -> str:
    return system if isinstance(system, str) else (text_of(system) or "")


def conversation(body: dict[str, Any]) -> dict[str, Any]:
    """A chat-shaped view for routing, difficulty and prefix fingerprints (text only)."""
    messages: list[dict[str, Any]] = []
    system = system_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or ():
        content = message.get("content")
        messages.append({"role": message.get("role"), "content": content if isinstance(content, str) else text_of(content)})
    view: dict[str, Any] = {"messages": messages, "tools": body.get("tools") or []}
    if isinstance(body.get("metadata"), dict):  # routes may match on it (`match.metadata`)
        view["metadata"] = body["metadata"]
    return view


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    return 3 + estimate_tokens(body.get("system")) + estimate_tokens(body.get("tools")) + sum(
        4 + estimate_tokens(m.get("content")) for m in body.get("messages") or ())


class _UsagePeek(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _MessagePeek(msgspec.Struct):
    usage: _UsagePeek | None = None


class _DeltaPeek(msgspec.Struct):
    type: str = ""


class _EventPeek(msgspec.Struct):
    type: str = ""
    message: _MessagePeek | None = None
    usage: _UsagePeek | None = None
    delta: _DeltaPeek | None = None


_message_decoder = msgspec.json.Decoder(_MessagePeek)
_event_decoder = msgspec.json.Decoder(_EventPeek)
_DELIVERED = frozenset({"text_delta", "input_json_delta", "thinking_delta"})


def _usage(peek: _UsagePeek | None) -> Usage | None:
    return None if peek is None else message_usage(msgspec.structs.asdict(peek))[0]


def usage_of(body: bytes) -> Usage:
    """Usage of a Messages response (cache reads and writes counted as prompt tokens)."""
    try:
        return _usage(_message_decoder.decode(body).usage) or Usage()
    except msgspec.DecodeError:
        return Usage()


def replay_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished `message` as the documented event sequence of a live stream."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**(message.get("usage") or {}), "output_tokens": 1}}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message.get("content") or []):
        kind = block.get("type")
        if kind == "text":
            opening, deltas = {"type": "text", "text": ""}, [{"type": "text_delta", "text": p}
                                                             for p in split_text(block.get("text", ""))]
        elif kind == "tool_use":
            opening = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p}
                      for p in split_text(msgspec.json.encode(block.get("input") or {}).decode())]
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in split_text(block.get("thinking", ""))]
            deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
        else:  # redacted thinking, server tool blocks: whole in their start event
            opening, deltas = block, []
        events.append({"type": "content_block_start", "index": index, "content_block": opening})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta",
                   "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")},
                   "usage": {"output_tokens": (message.get("usage") or {}).get("output_tokens", 0)}})
    events.append({"type": "message_stop"})
    return events


def assemble_message(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The inverse of `replay_events`: None unless the stream reached `message_stop` cleanly."""
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, list[str]] = {}
    finished = False
    for event in events:
        kind = event.get("type")
        if kind == "error":
            return None
        if kind == "message_start":
            message = dict(event.get("message") or {})
        elif kind == "content_block_start":
            blocks[event.get("index", 0)] = dict(event.get("content_block") or {})
        elif kind == "content_block_delta":
            index, delta = event.get("index", 0), event.get("delta") or {}
            block = blocks.setdefault(index, {})
            field = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}.get(
                delta.get("type"))
            if field is not None:
                block[field] = block.get(field, "") + delta.get(field, "")
            elif delta.get("type") == "input_json_delta":
                partial_json.setdefault(index, []).append(delta.get("partial_json", ""))
        elif kind == "message_delta" and message is not None:
            message.update(event.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
        elif kind == "message_stop":
            finished = True
    if message is None or not finished:
        return None
    for index, parts in partial_json.items():
        blocks[index]["input"] = msgspec.json.decode("".join(parts) or "{}")
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


class MessagesWire:
    api = Api.MESSAGES
    done = b""
    cacheable_streams = True
    requires_final = True  # a stream without `message_stop` was cut, whatever the transport says
    check = staticmethod(answer_check("content"))

    def decode(self, raw: bytes) -> Inbound:
        body = decode_json(raw)
        view = convert(body, MessagesRequest)
        return Inbound(
            api=self.api, body=body, view=view, model=view.model, stream=bool(view.stream),
            include_usage=True, output_cap=view.max_tokens, n=1, messages=len(view.messages),
            prompt_tokens=estimate_prompt_tokens(body), conversation=conversation(body),
        )

    def prepare(self, inbound: Inbound, upstream_model: str, max_output: int | None) -> dict[str, Any]:
        return {**inbound.body, "model": upstream_model}

    def usage(self, body: bytes) -> Usage:
        return usage_of(body)

    def peek(self, payload: bytes) -> Peek:
        try:
            event = _event_decoder.decode(payload)
        except msgspec.DecodeError:
            return Peek(valid=False)
        if event.type == "message_start":
            return Peek(usage=_usage(event.message.usage) if event.message else None, preamble=True)
        if event.type in ("ping", "content_block_start"):  # no answer yet: text arrives in deltas
            return Peek(preamble=True)
        if event.type == "message_delta":
            return Peek(usage=_usage(event.usage))
        if event.type == "content_block_delta":
            return Peek(delivered=int(event.delta is not None and event.delta.type in _DELIVERED))
        return Peek(final=event.type == "message_stop")

    def frame(self, payload: bytes) -> bytes:
        try:
            kind = _event_decoder.decode(payload).type or "message"
        except msgspec.DecodeError:
            kind = "message"
        return named(kind, payload)

    def error_frame(self, message: str, type: str, code: str | None) -> bytes:
        status = {"rate_limit_error": 429, "timeout_error": 504}.get(type, 529)
        return named("error", anthropic_error_body(status, message))

    def replay(self, body: bytes, include_usage: bool) -> list[bytes]:
        return [msgspec.json.encode(event) for event in replay_events(msgspec.json.decode(body))]

    def assemble(self, payloads: list[bytes]) -> bytes | None:
        try:
            message = assemble_message([msgspec.json.decode(p) for p in payloads])
        except (msgspec.DecodeError, KeyError, TypeError):
            return None
        return None if message is None else msgspec.json.encode(message)


WIRE = MessagesWire()
