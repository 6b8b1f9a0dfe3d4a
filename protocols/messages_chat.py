"""Translation from Anthropic Messages callers to OpenAI Chat Completions upstreams (OpenAI,
OpenAI-compatible servers, the bundled engine), both directions of a call.

What maps: system prompts, multi-turn text, images (base64 and URL), PDF documents (as file
parts), tools and tool results (ids kept as they are), tool_choice and
`disable_parallel_tool_use`, stop sequences, stop reasons, usage (cache reads as cached prompt
tokens), streaming (events built in Anthropic's documented order).
What is dropped, and named in the `x-gateway-dropped` response header: `thinking` (the option and
earlier thinking blocks: another vendor cannot verify their signatures), `cache_control`
(OpenAI-compatible upstreams cache prefixes by themselves), `top_k`, metadata other than
`user_id`, and any other top-level field chat has no equivalent for.
What is refused with a 400 (`Untranslatable`): server tools (web search, code execution, ...),
documents other than PDF or plain text, more than 4 stop sequences.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec

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
                        "top_p", "tools", "tool_choice", "metadata"})
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
    if block.get("is_error"):
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
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_turn(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
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
        content = message.get("content")
        if isinstance(content, list) and any(b.get("type") in ("thinking", "redacted_thinking") for b in content):
            names.add("thinking")
    if b'"cache_control"' in msgspec.json.encode(body):
        names.add("cache_control")
    return sorted(names)


def usage_object(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens, "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": usage.cached_tokens, "cache_creation_input_tokens": 0}


def _arguments(text: str) -> Any:
    try:
        parsed = json.loads(text or "{}")
    except ValueError:
        return {"arguments": text}  # still an object, as tool_use.input must be
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def message_from_completion(document: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
    choice = (document.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if reply.get("content"):
        content.append({"type": "text", "text": reply["content"]})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""),
                        "input": _arguments(function.get("arguments", ""))})
    usage = to_usage(msgspec.convert(document.get("usage") or {}, UsagePeek)) or Usage()
    message = {"id": "msg_" + str(document.get("id", "")), "type": "message", "role": "assistant",
               "model": document.get("model", ""), "content": content,
               "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
               "usage": usage_object(usage)}
    return message, usage


class _ChunkStream:
    """Chat chunks → Messages events, one instance per stream; blocks open and close in order."""

    def __init__(self) -> None:
        self.started = False
        self.index = -1
        self.open: str | None = None  # "text" or the OpenAI tool-call index as str
        self.stop_reason: str | None = None
        self.usage = Usage()

    def _start(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        self.started = True
        message = {"id": "msg_" + str(chunk.get("id", "")), "type": "message", "role": "assistant",
                   "model": chunk.get("model", ""), "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
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
        events = [] if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = to_usage(msgspec.convert(chunk["usage"], UsagePeek)) or self.usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.open != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append({"type": "content_block_delta", "index": self.index,
                               "delta": {"type": "text_delta", "text": delta["content"]}})
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
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return events

    def finish(self) -> list[dict[str, Any]]:
        if self.stop_reason is None:
            raise EOFError("the upstream stream ended before its finish_reason")
        return [{"type": "message_delta", "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                 "usage": usage_object(self.usage)}, {"type": "message_stop"}]


class MessagesToChat:
    source = Api.MESSAGES
    target = Api.CHAT

    def request(self, body: dict[str, Any], hints: Any) -> dict[str, Any]:
        with translating("this target"):
            return to_chat(body)

    def dropped(self, body: dict[str, Any]) -> list[str]:
        return dropped(body)

    def response(self, body: bytes) -> tuple[bytes, Usage]:
        message, usage = message_from_completion(msgspec.json.decode(body))
        return msgspec.json.encode(message), usage

    async def stream(self, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        state = _ChunkStream()
        async for payload in payloads:
            chunk = msgspec.json.decode(payload)
            if isinstance(chunk, dict) and chunk.get("error"):
                raise UpstreamStreamError(chunk)
            for event in state.feed(chunk):
                yield msgspec.json.encode(event)
        for event in state.finish():
            yield msgspec.json.encode(event)


__all__ = ["MessagesToChat", "dropped", "message_from_completion", "to_chat"]
