"""A scriptable stand-in for the Anthropic Messages API, served over real HTTP on loopback.

Why a real server rather than a mocked transport: the adapter under test must be exercised through
the official `anthropic` SDK exactly as in production (headers, SSE decoding, error classes,
timeouts, connection pooling), so the stub speaks the documented wire protocol:

* ``POST /v1/messages`` with a JSON ``message`` response, or an SSE stream when ``"stream": true``
  (``message_start``, ``ping``, ``content_block_start``/``_delta``/``_stop``, ``message_delta``,
  ``message_stop``; ``error`` events mid-stream on request);
* ``POST /v1/messages/count_tokens`` (``{"input_tokens": N}``);
* error bodies ``{"type": "error", "error": {"type": ..., "message": ...}}`` with the matching
  status (``retry-after`` on 429), a ``request-id`` header on every response;
* ``x-api-key`` must equal the configured key (401 ``authentication_error`` otherwise; the key
  may also come as ``Authorization: Bearer <key>``, which is what anthropic SDK 2.x sends) and
  ``anthropic-version`` must be present (400 otherwise);
* the body is validated like the live API does for the mistakes a translator can make: unknown
  top-level fields, missing ``max_tokens``, ``system`` role inside ``messages``, empty text blocks,
  ``tool_use`` without a ``tool_result`` right after, malformed images/tools/tool_choice,
  temperature outside [0, 1]. It is *stricter* than the live API in one respect, on purpose:
  consecutive same-role turns are rejected (``strict_alternation=True``), so a translator that
  forgets to merge them is caught.
* prompt caching is simulated: the prefix up to the last ``cache_control`` block (in the API's
  order tools → system → messages) is "cached" when it reaches ``cache_min_tokens``; the first
  request reports ``cache_creation_input_tokens``, identical later ones ``cache_read_input_tokens``.
  Tokens are estimated as ceil(chars / 4) of the canonical JSON; output tokens are words.

Usage::

    with start_anthropic_stub(api_key="test-key") as (base_url, stub):
        stub.fail_next(2, status=529)                 # the next two calls get 529 overloaded
        stub.reply_text("hello there")                # then one fixed answer ...
        stub.reply_tool_use("get_weather", {"city": "Paris"})
        stub.hang_next(5.0)                           # ... one call that stalls 5 s before headers
        stub.error_mid_stream("overloaded_error", after=2)
        ...                                           # calls beyond the script use `stub.default`
        stub.last_body["system"]                      # what the last request carried
        stub.requests[0].headers["x-api-key"]

Scripted replies are consumed one per authenticated call, in order; the default reply (``Reply()``)
echoes the text of the last user turn. The server runs on its own event loop in a daemon thread,
so it works from synchronous and asynchronous tests alike.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import math
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_VERSION_HEADER = "anthropic-version"

# Status → Anthropic error type, as documented at docs.anthropic.com/en/api/errors.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
DEFAULT_MESSAGES: dict[int, str] = {
    400: "prompt is too long: 250000 tokens > 200000 maximum",
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    404: "The requested resource could not be found.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    504: "Request timed out",
    529: "Overloaded",
}
TOP_LEVEL_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
        "container", "mcp_servers", "output_config", "cache_control", "inference_geo", "speed",
        "diagnostics", "context_management",
    }
)
# Betas under which `messages` may hold `role: "system"` turns (what Claude Code's default model sends).
SYSTEM_TURN_BETAS = ("mid-conversation-", "per-turn-control-")
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


@dataclass(slots=True)
class ToolUse:
    name: str
    input: dict[str, Any]
    id: str | None = None  # None: a fresh "toolu_…" id


@dataclass(slots=True)
class Reply:
    """What the stub does for one call. Every field has a sensible default (echo, end_turn)."""

    text: str | None = None  # None: echo the text of the last user turn ("" with tool uses)
    tool_uses: list[ToolUse] = field(default_factory=list)
    stop_reason: str | None = None  # None: derived (tool_use / stop_sequence / max_tokens / end_turn)
    usage: dict[str, int] | None = None  # overrides merged into the computed usage
    status: int = 200  # >= 400: answer with an error body instead
    error_type: str | None = None  # None: from ERROR_TYPES
    error_message: str | None = None  # None: from DEFAULT_MESSAGES
    retry_after: float | None = None  # `retry-after` header (429 defaults to 1)
    delay: float = 0.0  # seconds to stall before sending response headers
    event_delay: float = 0.0  # seconds between SSE events
    stream_error: str | None = None  # error type of an `error` event sent mid-stream
    stream_error_after: int = 1  # content deltas sent before that error event
    end_early_after: int | None = None  # end the stream cleanly after N deltas, no message_stop
    chunk_size: int = 5  # characters per text_delta / input_json_delta


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None when the body was not JSON
    raw: bytes


class StubController:
    """Script behaviour and read what was received. Thread-safe: the server runs elsewhere."""

    def __init__(
        self, api_key: str = "test-key", *, strict_alternation: bool = True, cache_min_tokens: int = 1024
    ) -> None:
        self.api_key = api_key
        self.strict_alternation = strict_alternation
        self.cache_min_tokens = cache_min_tokens
        self.default = Reply()
        # Decides a reply from the request when the script is empty (e.g. an agent's tool round:
        # a tool call while no tool result is in the conversation, then the final text); None: `default`.
        self.responder: Any = None
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._cached_prefixes: set[str] = set()
        self._lock = threading.Lock()

    # ---- scripting -------------------------------------------------------------------------
    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def fail_next(
        self,
        n: int = 1,
        status: int = 529,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        error_type: str | None = None,
    ) -> None:
        self.enqueue(*[Reply(status=status, error_message=message, retry_after=retry_after, error_type=error_type)] * n)

    def hang_next(self, seconds: float, n: int = 1) -> None:
        self.enqueue(*[Reply(delay=seconds)] * n)

    def reply_text(self, text: str, **fields: Any) -> None:
        self.enqueue(Reply(text=text, **fields))

    def reply_tool_use(
        self, name: str, input: dict[str, Any], *, id: str | None = None, text: str = "", **fields: Any
    ) -> None:
        self.enqueue(Reply(text=text, tool_uses=[ToolUse(name, input, id)], **fields))

    def error_mid_stream(
        self, error_type: str = "overloaded_error", *, after: int = 1, text: str = "partial answer that breaks off"
    ) -> None:
        self.enqueue(Reply(text=text, stream_error=error_type, stream_error_after=after, chunk_size=3))

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self._cached_prefixes.clear()
            self.default = Reply()
            self.responder = None

    # ---- reading ---------------------------------------------------------------------------
    @property
    def bodies(self) -> list[Any]:
        with self._lock:
            return [r.body for r in self.requests if r.path == "/v1/messages"]

    @property
    def last_body(self) -> Any:
        bodies = self.bodies
        if not bodies:
            raise AssertionError("the Anthropic stub has received no /v1/messages request")
        return bodies[-1]

    @property
    def call_count(self) -> int:
        return len(self.bodies)

    # ---- internals used by the server ----------------------------------------------------------
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_reply(self, body: Any = None) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        decided = self.responder(body) if self.responder is not None and isinstance(body, dict) else None
        return decided if decided is not None else self.default

    def _cache_lookup(self, key: str) -> bool:
        """True on a hit; a miss stores the key (the entry is 'created')."""
        with self._lock:
            hit = key in self._cached_prefixes
            self._cached_prefixes.add(key)
            return hit


# ---- request validation (the mistakes a translator can make) -------------------------------------

class _Invalid(Exception):
    pass


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise _Invalid(message)


def _validate_block(block: Any, where: str, role: str) -> None:
    _check(isinstance(block, dict) and isinstance(block.get("type"), str), f"{where}: content block must be an object with a type")
    kind = block["type"]
    if kind == "text":
        _check(isinstance(block.get("text"), str) and block["text"] != "", f"{where}: text content blocks must be non-empty")
    elif kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            _check(source.get("media_type") in IMAGE_MEDIA_TYPES, f"{where}.source.media_type: unsupported image type")
            _check(isinstance(source.get("data"), str) and source["data"] != "", f"{where}.source.data: required")
        else:
            _check(source.get("type") == "url" and str(source.get("url", "")).startswith(("http://", "https://")),
                   f"{where}.source: expected a base64 or url image source")
    elif kind == "tool_use":
        _check(role == "assistant", f"{where}: tool_use blocks are only allowed in assistant turns")
        _check(isinstance(block.get("id"), str) and isinstance(block.get("name"), str), f"{where}: tool_use needs id and name")
        _check(isinstance(block.get("input"), dict), f"{where}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        _check(role == "user", f"{where}: tool_result blocks are only allowed in user turns")
        _check(isinstance(block.get("tool_use_id"), str), f"{where}.tool_use_id: Field required")
    elif kind == "thinking":  # Anthropic verifies the signature of thinking sent back to it
        _check(role == "assistant" and block.get("signature") == thinking_signature(str(block.get("thinking"))),
               f"{where}: Invalid `signature` in `thinking` block")
    elif kind not in ("document", "redacted_thinking"):
        raise _Invalid(f"{where}.type: unknown content block type {kind!r}")


def _validate(body: Any, strict_alternation: bool, betas: str = "") -> None:
    _check(isinstance(body, dict), "body: Input should be an object")
    extra = sorted(set(body) - TOP_LEVEL_FIELDS)
    _check(not extra, f"{', '.join(extra)}: Extra inputs are not permitted")
    _check(isinstance(body.get("model"), str) and body["model"] != "", "model: Field required")
    _check(isinstance(body.get("max_tokens"), int) and body["max_tokens"] >= 1, "max_tokens: Field required")
    if "temperature" in body:
        _check(isinstance(body["temperature"], (int, float)) and 0 <= body["temperature"] <= 1,
               "temperature: Input should be less than or equal to 1")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _check(isinstance(system, list), "system: Input should be a valid string or list")
        for i, block in enumerate(system):
            _check(isinstance(block, dict) and block.get("type") == "text" and block.get("text"),
                   f"system.{i}: system blocks must be non-empty text blocks")
    messages = body.get("messages")
    _check(isinstance(messages, list) and messages, "messages: at least one message is required")
    previous_role = None
    pending_tool_ids: set[str] = set()
    system_turns = any(beta.strip().startswith(SYSTEM_TURN_BETAS) for beta in betas.split(","))
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system" and system_turns:  # text only, and outside the user/assistant alternation
            content = message.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            _check(isinstance(blocks, list) and blocks and all(isinstance(b, dict) and b.get("type") == "text"
                                                               and b.get("text") for b in blocks),
                   f"messages.{i}.content: system messages carry non-empty text blocks only")
            continue
        _check(role in ("user", "assistant"), f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if strict_alternation:
            _check(role != previous_role, f"messages.{i}: roles must alternate between user and assistant")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        _check(isinstance(blocks, list) and (blocks or i == len(messages) - 1),
               f"messages.{i}: all messages must have non-empty content except for the optional final assistant message")
        for j, block in enumerate(blocks):
            _validate_block(block, f"messages.{i}.content.{j}", role)
        if pending_tool_ids:
            answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
            _check(role == "user" and pending_tool_ids <= answered,
                   f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                   f"{', '.join(sorted(pending_tool_ids - answered))}")
        pending_tool_ids = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        previous_role = role
    tools = body.get("tools") or []
    _check(isinstance(tools, list), "tools: Input should be a valid list")
    for i, tool in enumerate(tools):
        _check(isinstance(tool, dict) and TOOL_NAME.match(str(tool.get("name", ""))) is not None,
               f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        _check(isinstance(schema, dict) and schema.get("type") == "object", f"tools.{i}.input_schema.type: Input should be 'object'")
        _check(not (set(tool) - {"name", "description", "input_schema", "cache_control", "type", "defer_loading"}),
               f"tools.{i}: Extra inputs are not permitted")
    choice = body.get("tool_choice")
    if choice is not None:
        _check(isinstance(choice, dict) and choice.get("type") in ("auto", "any", "tool", "none"),
               "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        if choice["type"] == "tool":
            _check(any(t.get("name") == choice.get("name") for t in tools), "tool_choice.name: no tool with that name")
    stops = body.get("stop_sequences")
    if stops is not None:
        _check(isinstance(stops, list) and all(isinstance(s, str) and s.strip() for s in stops),
               "stop_sequences: each stop sequence must contain non-whitespace")
    metadata = body.get("metadata")
    if metadata is not None:
        _check(isinstance(metadata, dict) and set(metadata) <= {"user_id"}, "metadata: Extra inputs are not permitted")


# ---- token accounting and prompt caching ----------------------------------------------------------

def _strip_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip_cache_control(v) for v in value]
    return value


def _tokens(value: Any) -> int:
    text = json.dumps(_strip_cache_control(value), sort_keys=True, separators=(",", ":"))
    return math.ceil(len(text) / 4)


def _prompt_items(body: dict[str, Any]) -> list[Any]:
    """The prompt in the order the API caches it: tools, then system, then message blocks."""
    system = body.get("system")
    system_blocks = [{"type": "text", "text": system}] if isinstance(system, str) else (system or [])
    items: list[Any] = list(body.get("tools") or []) + list(system_blocks)
    for message in body["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        items.extend({"role": message["role"], **block} for block in blocks)
    return items


def _input_usage(body: dict[str, Any], controller: StubController) -> dict[str, int]:
    items = _prompt_items(body)
    total = max(1, _tokens(items))
    marked = [i for i, item in enumerate(items) if isinstance(item, dict) and "cache_control" in item]
    usage = {"input_tokens": total, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    if not marked:
        return usage
    prefix = items[: marked[-1] + 1]
    prefix_tokens = min(total, _tokens(prefix))
    if prefix_tokens < controller.cache_min_tokens:
        return usage
    key = hashlib.sha256(json.dumps(_strip_cache_control(prefix), sort_keys=True).encode()).hexdigest()
    hit = controller._cache_lookup(f"{body['model']}:{key}")
    usage["input_tokens"] = total - prefix_tokens
    usage["cache_read_input_tokens" if hit else "cache_creation_input_tokens"] = prefix_tokens
    return usage


def _echo_text(body: dict[str, Any]) -> str:
    """The text of the last user turn (text blocks and tool results), or 'ok' when it has none."""
    last_user = next((m for m in reversed(body["messages"]) if m["role"] == "user"), None)
    if last_user is None:
        return "ok"
    content = last_user["content"]
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if block["type"] == "text":
            parts.append(block["text"])
        elif block["type"] == "tool_result":
            inner = block.get("content", "")
            parts.append(inner if isinstance(inner, str) else " ".join(b.get("text", "") for b in inner))
    return " ".join(p for p in parts if p) or "ok"


# ---- building the answer ---------------------------------------------------------------------------

def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _answer(body: dict[str, Any], reply: Reply, controller: StubController) -> dict[str, Any]:
    """The complete `message` object for this call (the stream is cut from the same object)."""
    text = _echo_text(body) if reply.text is None and not reply.tool_uses else (reply.text or "")
    stop_reason, stop_sequence = reply.stop_reason, None
    if stop_reason is None:
        stop_reason = "tool_use" if reply.tool_uses else "end_turn"
        hits = [(text.find(s), s) for s in body.get("stop_sequences") or [] if s in text]
        if hits and not reply.tool_uses:
            position, stop_sequence = min(hits)
            text, stop_reason = text[:position], "stop_sequence"
        words = text.split()
        if len(words) > body["max_tokens"]:
            text, stop_reason = " ".join(words[: body["max_tokens"]]), "max_tokens"
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    if (body.get("thinking") or {}).get("type") == "enabled":  # extended thinking: a signed block first
        thought = f"Considering: {_echo_text(body)[:40]}"
        content.insert(0, {"type": "thinking", "thinking": thought, "signature": thinking_signature(thought)})
    content += [
        {"type": "tool_use", "id": t.id or _new_id("toolu"), "name": t.name, "input": t.input}
        for t in reply.tool_uses
    ]
    output_tokens = max(1, len(text.split()) + sum(_tokens(t.input) for t in reply.tool_uses))
    usage = {**_input_usage(body, controller), "output_tokens": output_tokens, **(reply.usage or {})}
    return {
        "id": _new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }


def thinking_signature(thought: str) -> str:
    """What the stub signs a thinking block with; a block sent back must carry the same."""
    import hashlib

    return "sig_" + hashlib.sha256(thought.encode()).hexdigest()[:24]


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), max(1, size))] or [""]


def _error_event(error_type: str) -> dict[str, Any]:
    status = next((code for code, name in ERROR_TYPES.items() if name == error_type), 500)
    return {"type": "error", "error": {"type": error_type, "message": DEFAULT_MESSAGES.get(status, error_type)}}


def _stream_events(message: dict[str, Any], reply: Reply) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documented SSE sequence for `message`, including the scripted mid-stream failure."""
    start = copy.deepcopy(message)
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = {**message["usage"], "output_tokens": 1}
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    deltas = 0
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            fragments = [{"type": "text_delta", "text": p} for p in _pieces(block["text"], reply.chunk_size)]
        elif block["type"] == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            fragments = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], reply.chunk_size)]
            fragments.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            opening = {**block, "input": {}}
            arguments = json.dumps(block["input"])
            fragments = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(arguments, reply.chunk_size)]
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}
        for fragment in fragments:
            if reply.stream_error is not None and deltas >= reply.stream_error_after:
                yield "error", _error_event(reply.stream_error)
                return
            if reply.end_early_after is not None and deltas >= reply.end_early_after:
                return
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": fragment}
            deltas += 1
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    if reply.stream_error is not None:  # asked for an error after more deltas than there were
        yield "error", _error_event(reply.stream_error)
        return
    yield "message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
        "usage": {"output_tokens": message["usage"]["output_tokens"]},
    }
    yield "message_stop", {"type": "message_stop"}


# ---- the HTTP server -----------------------------------------------------------------------------

def _error_response(status: int, error_type: str | None = None, message: str | None = None,
                    retry_after: float | None = None) -> web.Response:
    headers = {"request-id": _new_id("req")}
    if retry_after is None and status == 429:
        retry_after = 1
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    payload = {
        "type": "error",
        "error": {"type": error_type or ERROR_TYPES.get(status, "api_error"),
                  "message": message or DEFAULT_MESSAGES.get(status, "error")},
    }
    return web.json_response(payload, status=status, headers=headers)


def _presented_key(request: web.Request) -> str | None:
    """The API key as sent: `x-api-key`, or `Authorization: Bearer` (what SDK 2.x sends for api_key)."""
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


class AnthropicStub:
    """The server: an aiohttp app on its own loop in a daemon thread, bound to a free port."""

    def __init__(self, api_key: str = "test-key", *, host: str = "127.0.0.1", **controller_options: Any) -> None:
        self.controller = StubController(api_key, **controller_options)
        self.host = host
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _authenticate(self, request: web.Request) -> web.Response | None:
        if _presented_key(request) != self.controller.api_key:
            return _error_response(401, message="invalid x-api-key")
        if not request.headers.get(API_VERSION_HEADER):
            return _error_response(400, message="anthropic-version: header is required")
        return None

    async def _receive(self, request: web.Request) -> tuple[Any, web.Response | None]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.controller._record(RecordedRequest(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body, raw))
        if body is None:
            return None, _error_response(400, message="There was an error parsing the body as JSON")
        return body, await self._authenticate(request)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._receive(request)
        if refusal is not None:
            return refusal
        reply = self.controller._next_reply(body)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status >= 400:
            return _error_response(reply.status, reply.error_type, reply.error_message, reply.retry_after)
        try:
            _validate(body, self.controller.strict_alternation, request.headers.get("anthropic-beta", ""))
        except _Invalid as exc:
            return _error_response(400, message=str(exc))
        message = _answer(body, reply, self.controller)
        if not body.get("stream"):
            return web.json_response(message, headers={"request-id": _new_id("req")})
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
                     "request-id": _new_id("req")}
        )
        await response.prepare(request)
        for event, data in _stream_events(message, reply):
            if reply.event_delay:
                await asyncio.sleep(reply.event_delay)
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response

    async def _count_tokens(self, request: web.Request) -> web.Response:
        body, refusal = await self._receive(request)
        if refusal is not None:
            return refusal
        try:
            _validate({**body, "max_tokens": 1}, self.controller.strict_alternation,
                      request.headers.get("anthropic-beta", ""))
        except _Invalid as exc:
            return _error_response(400, message=str(exc))
        return web.json_response({"input_tokens": max(1, _tokens(_prompt_items(body)))})

    def start(self) -> str:
        """Start serving; returns the base URL to give the SDK (it appends `/v1/messages`)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v1/messages", self._messages)
            app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
            # Cancel handlers whose client went away, so a scripted hang never delays shutdown.
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
            try:
                loop.run_until_complete(runner.setup())
                site = web.TCPSite(runner, self.host, 0)
                loop.run_until_complete(site.start())
                self.port = runner.addresses[0][1]
            except BaseException as exc:  # surfaced to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=serve, name="anthropic-stub", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise RuntimeError("the Anthropic stub failed to start") from failure[0]
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> AnthropicStub:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def start_anthropic_stub(api_key: str = "test-key", **options: Any) -> Iterator[tuple[str, StubController]]:
    """Serve the stub for the duration of the block; yields (base_url, controller).

    `options`: `strict_alternation` (default True), `cache_min_tokens` (default 1024), `host`.
    """
    stub = AnthropicStub(api_key, **options)
    stub.start()
    try:
        yield stub.base_url, stub.controller
    finally:
        stub.stop()


def main() -> None:
    """Serve standalone (benchmarks run it in its own process): prints the base URL, then serves."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Anthropic Messages API stub")
    parser.add_argument("--api-key", default="test-key")
    args = parser.parse_args()
    stub = AnthropicStub(args.api_key, strict_alternation=False)
    print(stub.start(), flush=True)
    sys.stdin.read()  # until the parent closes our stdin


if __name__ == "__main__":
    main()
