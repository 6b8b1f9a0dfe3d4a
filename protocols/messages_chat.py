"""Translation from Anthropic Messages callers to OpenAI Chat Completions upstreams (OpenAI,
OpenAI-compatible servers, the bundled engine), both directions of a call.

What maps: system prompts, multi-turn text, images (base64 and URL), PDF documents (as file
parts), tools and tool results (ids kept as they are), tool_choice and
`disable_parallel_tool_use`, stop sequences, stop reasons, usage (cache reads as cached prompt
tokens, cache writes as `cache_creation_input_tokens`), `output_config.format` as a strict
`json_schema` response format, refusals (`message.refusal` as text with `stop_reason: refusal`),
streaming (events built in Anthropic's documented order; `message_start` states the input tokens
when the target can count them).
Mapped, and named in `x-gateway-mapped`: a tool result's `is_error` (chat has no flag: "Error: ").
What is dropped, and named in the `x-gateway-dropped` response header (protocols/fidelity.py):
`thinking` (the option and earlier thinking blocks: another vendor cannot verify their
signatures), `cache_control` (OpenAI-compatible upstreams cache prefixes by themselves), `top_k`,
metadata other than `user_id`, images and documents inside tool results (chat tool messages are
text only), keys of messages, blocks and tools chat has no place for, and any other top-level
field chat has no equivalent for.
What is refused with a 400 (`Untranslatable`): server tools (web search, code execution, ...),
documents other than PDF or plain text, more than 4 stop sequences.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from protocols import fidelity
from protocols.api import Api
from protocols.errors import Untranslatable, UpstreamStreamError, translating
from protocols.text import text_of
from protocols.usage import Usage, UsagePeek, to_usage

# OpenAI finish reasons → Anthropic stop reasons.
STOP_REASONS: dict[str | None, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
TOOL_CHOICES: dict[str, Any] = {"auto": "auto", "any": "required", "none": "none"}
# Top-level fields that are translated (everything else a caller sent is dropped, and named).
TRANSLATED = frozenset({"model", "messages", "max_tokens", "system", "stream", "stop_sequences", "temperature",
                        "top_p", "tools", "tool_choice", "metadata", "output_config", "output_format"})
# Keys each object is read for; anything else it carries is named (cache_control is named on its own).
_MESSAGE_KEYS = frozenset({"role", "content"})
_BLOCK_KEYS: dict[str, frozenset[str]] = {
    "text": frozenset({"type", "text", "cache_control"}),
    "image": frozenset({"type", "source", "cache_control"}),
    "document": frozenset({"type", "source", "title", "cache_control"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control"}),
}
_TOOL_KEYS = frozenset({"type", "name", "description", "input_schema", "cache_control"})
MAX_STOP_SEQUENCES = 4


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url", "")}}
    if source.get("type") == "base64":
        return {"type": "image_url",
                "image_url": {"url": f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"}}
    raise Untranslatable(f"image source type {source.get('type')!r} cannot be sent to this target")


def _document_part(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "text":
        fidelity.mapped("document")  # a plain-text document is sent as a text part
        if block.get("title"):
            fidelity.dropped("document.title")  # a text part has no title
        return {"type": "text", "text": source.get("data", "")}
    if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
        return {"type": "file", "file": {"filename": block.get("title") or "document.pdf",
                                         "file_data": f"data:application/pdf;base64,{source.get('data', '')}"}}
    raise Untranslatable("only PDF (base64) and plain-text documents can be sent to this target")


_USER_PARTS = {
    "text": lambda block: {"type": "text", "text": block.get("text", "")},
    "image": _image_part,
    "document": _document_part,
}


def _tool_message(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content")
    text = content if isinstance(content, str) else text_of(content or [])
    for inner in content if isinstance(content, list) else []:
        if isinstance(inner, dict) and inner.get("type") != "text":  # chat tool messages are text only
            fidelity.dropped(f"tool_result.{inner.get('type')}")
    if block.get("is_error"):
        fidelity.mapped("tool_result.is_error")  # chat has no error flag: the text says so
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}


def _user_turn(content: Any) -> list[dict[str, Any]]:
    """Tool results first (they answer the previous assistant turn), then the user's own parts."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools = [_tool_message(b) for b in content if b.get("type") == "tool_result"]
    parts = []
    for block in content:
        kind = block.get("type")
        if kind == "tool_result":
            continue
        translate = _USER_PARTS.get(kind)
        if translate is None:
            raise Untranslatable(f"content block type {kind!r} cannot be sent to this target")
        parts.append(translate(block))
    for block in content:
        fidelity.unread(block, _BLOCK_KEYS.get(block.get("type"), ()), str(block.get("type")))
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_turn(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
    for block in content:
        kind = block.get("type")
        if isinstance(kind, str) and kind in _BLOCK_KEYS:
            fidelity.unread(block, _BLOCK_KEYS[kind], kind)
        elif kind not in ("thinking", "redacted_thinking"):  # thinking is named by `dropped`
            fidelity.dropped(f"messages.{kind}")  # e.g. a server tool's call and result
    calls = [{"id": b.get("id", ""), "type": "function",
              "function": {"name": b.get("name", ""), "arguments": json.dumps(b.get("input") or {})}}
             for b in content if b.get("type") == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message] if text or calls else []  # a thinking-only turn carries nothing here


def _system_turn(content: Any) -> list[dict[str, Any]]:
    """A `system` turn inside `messages` (Claude Code's default model sends them mid-conversation):
    a chat system message at the same place, its text parts joined."""
    text = content if isinstance(content, str) else text_of(content or [])
    if not isinstance(content, str) and any(b.get("type") != "text" for b in content or []):
        raise Untranslatable("a system message inside messages can carry only text for this target")
    return [{"role": "system", "content": text}] if text else []


_TURNS = {"user": _user_turn, "assistant": _assistant_turn, "system": _system_turn}


def _turn(message: dict[str, Any]) -> list[dict[str, Any]]:
    translate = _TURNS.get(message.get("role"))
    if translate is None:
        raise Untranslatable(f"message role {message.get('role')!r} cannot be sent to this target")
    return translate(message.get("content"))


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if tool.get("type") not in (None, "custom"):
            raise Untranslatable(f"server tool {tool.get('type')!r} is only available on Anthropic targets")
        fidelity.unread(tool, _TOOL_KEYS, "tools")
        function = {"name": tool.get("name", ""), "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: dict[str, Any]) -> tuple[Any, bool | None]:
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}, parallel
    return TOOL_CHOICES.get(kind, "auto"), parallel


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """Structured outputs (`output_config.format`, or the beta's top-level `output_format`) as
    chat's strict `json_schema` response format; the rest of `output_config` has no chat equivalent."""
    config = body.get("output_config") if isinstance(body.get("output_config"), dict) else {}
    fidelity.unread(config, ("format",), "output_config")  # e.g. `effort`
    fmt = config.get("format") or body.get("output_format")
    if not fmt:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise Untranslatable("output_config.format must be a json_schema format with a schema object")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    system_text = system if isinstance(system, str) else text_of(system or [])
    if system_text:
        messages.append({"role": "system", "content": system_text})
    for message in body.get("messages") or []:
        messages += _turn(message)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            chat[field] = body[field]
    stops = body.get("stop_sequences") or []
    if len(stops) > MAX_STOP_SEQUENCES:
        raise Untranslatable(f"at most {MAX_STOP_SEQUENCES} stop_sequences can be sent to this target")
    if stops:
        chat["stop"] = stops
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
        if body.get("tool_choice"):
            chat["tool_choice"], parallel = _tool_choice(body["tool_choice"])
            if parallel is not None:
                chat["parallel_tool_calls"] = parallel
    response_format = _response_format(body)
    if response_format is not None:
        chat["response_format"] = response_format
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        chat["user"] = user
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def dropped(body: dict[str, Any]) -> list[str]:
    """What a caller sent that the chat upstream will not see."""
    names = {key for key in body if key not in TRANSLATED}
    if set(body.get("metadata") or {}) - {"user_id"}:
        names.add("metadata")
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            names.update(f"messages.{key}" for key, value in message.items() if key not in _MESSAGE_KEYS and value)
        content = message.get("content")
        if isinstance(content, list) and any(b.get("type") in ("thinking", "redacted_thinking") for b in content):
            names.add("thinking")
    if b'"cache_control"' in msgspec.json.encode(body):
        names.add("cache_control")
    return sorted(names)


def usage_object(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens,
            "output_tokens": usage.completion_tokens, "cache_read_input_tokens": usage.cached_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens}


def _arguments(text: str) -> Any:
    try:
        parsed = json.loads(text or "{}")
    except ValueError:
        return {"arguments": text}  # still an object, as tool_use.input must be
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _stop_reason(finish_reason: str | None, refused: bool) -> str:
    return "refusal" if refused else STOP_REASONS.get(finish_reason, "end_turn")


def message_from_completion(document: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
    choice = (document.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    for text in (reply.get("content"), reply.get("refusal")):  # a refusal is said as text, stop_reason says why
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""),
                        "input": _arguments(function.get("arguments", ""))})
    usage = to_usage(msgspec.convert(document.get("usage") or {}, UsagePeek)) or Usage()
    message = {"id": "msg_" + str(document.get("id", "")), "type": "message", "role": "assistant",
               "model": document.get("model", ""), "content": content,
               "stop_reason": _stop_reason(choice.get("finish_reason"), bool(reply.get("refusal"))), "stop_sequence": None,
               "usage": usage_object(usage)}
    return message, usage


class _ChunkStream:
    """Chat chunks → Messages events, one instance per stream; blocks open and close in order."""

    def __init__(self, prompt_tokens: int | None = None) -> None:
        self.started = False
        self.index = -1
        self.open: str | None = None  # "text" or the OpenAI tool-call index as str
        self.stop_reason: str | None = None
        self.refused = False
        self.usage = Usage(prompt_tokens=prompt_tokens or 0)

    def _start(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """`message_start` states the input tokens when they are known before the first byte: the
        first chunk's usage (servers that report it on every chunk) or the target's own count."""
        self.started = True
        usage = usage_object(self.usage)
        message = {"id": "msg_" + str(chunk.get("id", "")), "type": "message", "role": "assistant",
                   "model": chunk.get("model", ""), "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {**usage, "output_tokens": 0}}
        return [{"type": "message_start", "message": message}]

    def _close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.index}]

    def _open(self, key: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.index += 1
        self.open = key
        return events + [{"type": "content_block_start", "index": self.index, "content_block": block}]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if chunk.get("usage"):
            self.usage = to_usage(msgspec.convert(chunk["usage"], UsagePeek)) or self.usage
        events = [] if self.started else self._start(chunk)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            for text, refusal in ((delta.get("content"), False), (delta.get("refusal"), True)):  # refusals as text
                if not text:
                    continue
                self.refused = self.refused or refusal
                if self.open != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append({"type": "content_block_delta", "index": self.index,
                               "delta": {"type": "text_delta", "text": text}})
            for call in delta.get("tool_calls") or []:
                key = str(call.get("index", 0))
                function = call.get("function") or {}
                if self.open != key:
                    events += self._open(key, {"type": "tool_use", "id": call.get("id", ""),
                                               "name": function.get("name", ""), "input": {}})
                if function.get("arguments"):
                    events.append({"type": "content_block_delta", "index": self.index,
                                   "delta": {"type": "input_json_delta", "partial_json": function["arguments"]}})
            if choice.get("finish_reason"):
                events += self._close()
                self.stop_reason = _stop_reason(choice["finish_reason"], self.refused)
        return events

    def finish(self) -> list[dict[str, Any]]:
        if self.stop_reason is None:
            raise EOFError("the upstream stream ended before its finish_reason")
        return [{"type": "message_delta", "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                 "usage": usage_object(self.usage)}, {"type": "message_stop"}]


class MessagesToChat:
    source = Api.MESSAGES
    target = Api.CHAT
    pivot_names: dict[str, str] = {}
    wants_prompt_count = True  # `message_start` states the input tokens

    def request(self, body: dict[str, Any], hints: Any) -> dict[str, Any]:
        with translating("this target"):
            return to_chat(body)

    def dropped(self, body: dict[str, Any]) -> list[str]:
        return dropped(body)

    def response(self, body: bytes) -> tuple[bytes, Usage]:
        message, usage = message_from_completion(msgspec.json.decode(body))
        return msgspec.json.encode(message), usage

    async def stream(self, payloads: AsyncIterator[bytes], *, prompt_tokens: int | None = None) -> AsyncIterator[bytes]:
        state = _ChunkStream(prompt_tokens)
        async for payload in payloads:
            chunk = msgspec.json.decode(payload)
            if isinstance(chunk, dict) and chunk.get("error"):
                raise UpstreamStreamError(chunk)
            for event in state.feed(chunk):
                yield msgspec.json.encode(event)
        for event in state.finish():
            yield msgspec.json.encode(event)


__all__ = ["MessagesToChat", "dropped", "message_from_completion", "to_chat"]
