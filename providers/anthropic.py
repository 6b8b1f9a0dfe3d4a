"""Anthropic Messages API behind the gateway's OpenAI-shaped `Provider` protocol.

The gateway speaks OpenAI chat-completions end to end, so this module translates in both
directions: an OpenAI request dict becomes a Messages API call (through the official `anthropic`
SDK, so auth, versioning and SSE decoding stay Anthropic's business), and the answer comes back as
OpenAI `chat.completion` bytes or `chat.completion.chunk` payloads. Every SDK failure is mapped to
the taxonomy of `providers.base` here, once, so the executor never sees an `anthropic` exception.

Translation is done by pure functions (`to_anthropic`, `completion_from_message`,
`StreamTranslator`) so they can be tested and reused without a network.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import httpx2
import msgspec
from anthropic import AsyncAnthropic

from policies.schema import TargetSpec
from providers.base import (
    AuthFailed,
    BadRequest,
    Completion,
    Health,
    ProviderError,
    ProviderRequest,
    Timeout,
    Timeouts,
    Unavailable,
    Usage,
    error_from_status,
    parse_retry_after,
    sdk_kwargs,
)

__all__ = ["AnthropicProvider", "StreamTranslator", "completion_from_message", "to_anthropic"]

DEFAULT_MAX_TOKENS = 4096
DEFAULT_MIN_CACHE_CHARS = 4096  # ≈ 1024 tokens, the smallest prefix Anthropic will cache
EPHEMERAL = {"type": "ephemeral"}

# Anthropic stop reasons → OpenAI finish reasons (unknown future reasons read as "stop").
FINISH_REASONS: dict[str | None, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# OpenAI tool_choice strings → Anthropic tool_choice objects (a named function becomes "tool").
TOOL_CHOICES: dict[str, dict[str, Any]] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
}

# Anthropic error `type` → the HTTP status it is documented with. Needed for `error` events inside
# a 200 stream, where the SDK's exception carries status 200 and only the body says what failed.
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_DATA_URL = re.compile(r"^data:(?P<media>[^;,]+)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)
# OpenAI roles that become turns; tool results travel in a user turn. System/developer go to `system`.
_ROLE_FOR: dict[str, str] = {"user": "user", "assistant": "assistant", "tool": "user"}
_JSON_INSTRUCTION = "Respond only with a single valid JSON object: no prose, no Markdown code fences."


# ---- request: OpenAI chat-completions → Anthropic Messages ---------------------------------------

def _text_of(content: Any) -> str:
    """Plain text of an OpenAI content value (string or list of text/refusal parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or part.get("refusal") or "" for part in content if isinstance(part, dict))


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequest("image_url part without a url")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.match(url)
    if match is None or ";base64" not in match["params"]:
        raise BadRequest("image_url must be an http(s) URL or a base64 data: URL")
    return {"type": "image", "source": {"type": "base64", "media_type": match["media"], "data": match["data"]}}


def _file_block(part: dict[str, Any]) -> dict[str, Any]:
    data = (part.get("file") or {}).get("file_data", "")
    match = _DATA_URL.match(data) if isinstance(data, str) else None
    if match is None or match["media"] != "application/pdf" or ";base64" not in match["params"]:
        raise BadRequest("file parts must carry a base64 PDF data: URL (file ids are not supported)")
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": match["data"]}}


_PART_TRANSLATORS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "text": lambda part: {"type": "text", "text": part.get("text", "")},
    "refusal": lambda part: {"type": "text", "text": part.get("refusal", "")},
    "image_url": _image_block,
    "file": _file_block,
}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI content → Anthropic blocks, dropping empty text (the API rejects empty text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        translate = _PART_TRANSLATORS.get(kind or "")
        if translate is None:
            raise BadRequest(f"unsupported content part type {kind!r} for an Anthropic target")
        block = translate(part)
        if block["type"] != "text" or block["text"]:
            blocks.append(block)
    return blocks


def _tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError as exc:
        raise BadRequest(f"tool call {call.get('id')!r} has arguments that are not valid JSON") from exc
    if not isinstance(parsed, dict):
        raise BadRequest(f"tool call {call.get('id')!r} arguments must be a JSON object")
    return {"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""), "input": parsed}


def _turn_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    role = message.get("role")
    if role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id", "")}
        blocks = _content_blocks(message.get("content"))
        if blocks:
            result["content"] = blocks
        return [result]
    blocks = _content_blocks(message.get("content"))
    if role == "assistant":
        blocks += [_tool_use_block(call) for call in message.get("tool_calls") or []]
    return blocks


def _translate_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split off system text and merge consecutive same-role turns, as the Messages API requires."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append({"type": "text", "text": text})
            continue
        if role not in _ROLE_FOR:
            raise BadRequest(f"unsupported message role {role!r} for an Anthropic target")
        blocks = _turn_blocks(message)
        if not blocks:
            continue  # e.g. an assistant turn with empty content and no tool calls
        anthropic_role = _ROLE_FOR[role]
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    return system, turns


def _translate_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    translated = []
    for tool in tools:
        function = tool.get("function") if tool.get("type", "function") == "function" else None
        if not isinstance(function, dict) or not function.get("name"):
            raise BadRequest(f"only function tools are supported for an Anthropic target, got {tool.get('type')!r}")
        entry = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        translated.append(entry)
    return translated


def _translate_tool_choice(choice: Any, parallel_tool_calls: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        translated = dict(TOOL_CHOICES.get(choice, TOOL_CHOICES["auto"]))
    elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        translated = {"type": "tool", "name": choice["function"]["name"]}
    elif choice is None and parallel_tool_calls is False:
        translated = {"type": "auto"}
    else:
        return None
    if parallel_tool_calls is False and translated["type"] != "none":
        translated["disable_parallel_tool_use"] = True
    return translated


def _json_instruction(response_format: Any) -> str | None:
    """Best effort for `response_format`: Anthropic has no JSON mode, so ask for it in the system prompt."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return _JSON_INSTRUCTION
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is None:
            return _JSON_INSTRUCTION
        return f"{_JSON_INSTRUCTION} The object must validate against this JSON Schema:\n{json.dumps(schema)}"
    return None


def _stop_sequences(stop: Any) -> list[str]:
    values = [stop] if isinstance(stop, str) else list(stop or [])
    return [s for s in values if isinstance(s, str) and s.strip()]  # whitespace-only ones are refused


def to_anthropic(
    body: dict[str, Any],
    *,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    cache_prefix: bool = False,
    min_cache_chars: int = DEFAULT_MIN_CACHE_CHARS,
) -> dict[str, Any]:
    """Translate an OpenAI chat-completions body into Messages API keyword arguments.

    Only the fields read here are sent; anything else in the body (penalties, seed, logit_bias,
    vendor extensions, `stream_options`) is dropped, because Anthropic rejects unknown fields.

    `cache_prefix` asks for `cache_control` breakpoints on the static prefix (last system block and
    last tool) when that prefix is long enough to be cached at all. `stream` is not set here.
    """
    if int(body.get("n") or 1) != 1:
        raise BadRequest("n > 1 is not supported by Anthropic targets")
    system, messages = _translate_messages(list(body.get("messages") or []))
    if not messages:
        raise BadRequest("at least one user or assistant message is required")
    instruction = _json_instruction(body.get("response_format"))
    if instruction:
        system.append({"type": "text", "text": instruction})
    params: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": int(body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens),
    }
    tools = _translate_tools(list(body.get("tools") or []))
    if tools:
        params["tools"] = tools
        choice = _translate_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            params["tool_choice"] = choice
    if system:
        params["system"] = system
    if body.get("temperature") is not None:
        params["temperature"] = min(1.0, max(0.0, float(body["temperature"])))  # OpenAI allows up to 2
    if body.get("top_p") is not None:
        params["top_p"] = float(body["top_p"])
    stops = _stop_sequences(body.get("stop"))
    if stops:
        params["stop_sequences"] = stops
    if isinstance(body.get("user"), str) and body["user"]:
        params["metadata"] = {"user_id": body["user"]}
    if cache_prefix:
        prefix_chars = sum(len(b["text"]) for b in system) + (len(json.dumps(tools)) if tools else 0)
        if prefix_chars >= min_cache_chars:
            for blocks in (system, tools):
                if blocks:
                    blocks[-1]["cache_control"] = dict(EPHEMERAL)
    return params


# ---- response: Anthropic Messages → OpenAI chat-completions ---------------------------------------

def _usage(prompt: int, cache_read: int, cache_creation: int, output: int) -> tuple[Usage, dict[str, Any]]:
    """Anthropic reports uncached, cache-read and cache-write input separately; OpenAI sums them."""
    usage = Usage(prompt_tokens=prompt + cache_read + cache_creation, completion_tokens=output, cached_tokens=cache_read)
    wire = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }
    return usage, wire


def _tool_call(block: Any) -> dict[str, Any]:
    return {
        "id": block.id,
        "type": "function",
        "function": {"name": block.name, "arguments": json.dumps(block.input, separators=(",", ":"))},
    }


def completion_from_message(message: anthropic.types.Message, *, created: int | None = None) -> Completion:
    """A finished Anthropic message as an OpenAI `chat.completion` document (thinking is not exposed)."""
    text = "".join(block.text for block in message.content if block.type == "text")
    tool_calls = [_tool_call(block) for block in message.content if block.type == "tool_use"]
    reply: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else ""), "refusal": None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    u = message.usage
    usage, wire_usage = _usage(u.input_tokens, u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0, u.output_tokens)
    document = {
        "id": message.id,
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": message.model,
        "choices": [
            {"index": 0, "message": reply, "finish_reason": FINISH_REASONS.get(message.stop_reason, "stop"), "logprobs": None}
        ],
        "usage": wire_usage,
    }
    return Completion(body=msgspec.json.encode(document), usage=usage)


class StreamTranslator:
    """Turns raw Messages stream events into OpenAI chunk dicts; one instance per stream.

    Tool calls are numbered by their order among tool calls (OpenAI's `index`), not by Anthropic's
    content block index, which also counts text and thinking blocks.
    """

    def __init__(self, *, created: int | None = None) -> None:
        self.created = created if created is not None else int(time.time())
        self.id = ""
        self.model = ""
        self.finished = False
        self.usage = Usage()
        self._input = {"input_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        self._output_tokens = 0
        self._tool_index: dict[int, int] = {}  # content block index → OpenAI tool call index
        self._tool_arguments: dict[int, str] = {}  # content block index → arguments sent so far
        self._tool_initial_input: dict[int, Any] = {}
        self._handlers: dict[str, Callable[[Any], list[dict[str, Any]]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "content_block_stop": self._block_stop,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
        }

    def feed(self, event: Any) -> list[dict[str, Any]]:
        handler = self._handlers.get(getattr(event, "type", ""))
        return handler(event) if handler is not None else []  # ping and future events: nothing

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def _take_usage(self, usage: Any) -> None:
        for key in self._input:
            value = getattr(usage, key, None)
            if value is not None:  # message_delta repeats cumulative counts; never add them up
                self._input[key] = value
        self._output_tokens = getattr(usage, "output_tokens", None) or self._output_tokens
        self.usage, _ = _usage(
            self._input["input_tokens"],
            self._input["cache_read_input_tokens"],
            self._input["cache_creation_input_tokens"],
            self._output_tokens,
        )

    def _message_start(self, event: Any) -> list[dict[str, Any]]:
        self.id, self.model = event.message.id, event.message.model
        self._take_usage(event.message.usage)
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, event: Any) -> list[dict[str, Any]]:
        block = event.content_block
        if block.type == "text":
            return [self._chunk({"content": block.text})] if block.text else []
        if block.type != "tool_use":
            return []  # thinking and server-tool blocks are not part of the OpenAI answer
        index = self._tool_index[event.index] = len(self._tool_index)
        self._tool_arguments[event.index] = ""
        self._tool_initial_input[event.index] = block.input
        call = {"index": index, "id": block.id, "type": "function", "function": {"name": block.name, "arguments": ""}}
        return [self._chunk({"tool_calls": [call]})]

    def _arguments_chunk(self, block_index: int, fragment: str) -> dict[str, Any]:
        self._tool_arguments[block_index] += fragment
        call = {"index": self._tool_index[block_index], "function": {"arguments": fragment}}
        return self._chunk({"tool_calls": [call]})

    def _block_delta(self, event: Any) -> list[dict[str, Any]]:
        delta = event.delta
        if delta.type == "text_delta" and delta.text:
            return [self._chunk({"content": delta.text})]
        if delta.type == "input_json_delta" and event.index in self._tool_index and delta.partial_json:
            return [self._arguments_chunk(event.index, delta.partial_json)]
        return []

    def _block_stop(self, event: Any) -> list[dict[str, Any]]:
        """A tool call that streamed no arguments still owes the caller a JSON object."""
        if event.index not in self._tool_index or self._tool_arguments[event.index]:
            return []
        initial = self._tool_initial_input.get(event.index) or {}
        return [self._arguments_chunk(event.index, json.dumps(initial, separators=(",", ":")))]

    def _message_delta(self, event: Any) -> list[dict[str, Any]]:
        self._take_usage(event.usage)
        return [self._chunk({}, FINISH_REASONS.get(event.delta.stop_reason, "stop"))]

    def _message_stop(self, event: Any) -> list[dict[str, Any]]:
        self.finished = True
        _, wire_usage = _usage(
            self._input["input_tokens"],
            self._input["cache_read_input_tokens"],
            self._input["cache_creation_input_tokens"],
            self._output_tokens,
        )
        return [{"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [], "usage": wire_usage}]


# ---- errors ------------------------------------------------------------------------------------

def map_error(exc: BaseException, target: str) -> ProviderError:
    """One place that knows the SDK's exceptions; everything else sees the taxonomy only."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, (TimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)):
        return Timeout(f"anthropic: timed out ({type(exc).__name__})", target=target)
    if isinstance(exc, anthropic.APIStatusError):
        message = exc.api_message or str(exc)
        status = exc.status_code
        if status < 400:  # an `error` event inside a 200 stream: the body's type says what failed
            status = ERROR_TYPE_STATUS.get(exc.type or "", 500)
        retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        label = f"anthropic {status} {exc.type}" if exc.type else f"anthropic {status}"
        return error_from_status(status, f"{label}: {message}", target=target, retry_after=retry_after)
    if isinstance(exc, (anthropic.APIConnectionError, httpx2.TransportError)):
        return Unavailable(f"anthropic: connection failed ({exc})", target=target)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return Unavailable(f"anthropic: malformed upstream response ({exc})", target=target)
    return Unavailable(f"anthropic: unexpected {type(exc).__name__}: {exc}", target=target)


# ---- the provider --------------------------------------------------------------------------------

# Keyword arguments `messages.create` declares. SDK 2.x dropped `temperature`/`top_p` from its
# signature (recent models ignore or refuse them); the wire protocol still carries them, so any
# translated field the SDK does not declare travels in `extra_body` instead of raising TypeError.
_SDK_PARAMS = frozenset(inspect.signature(anthropic.resources.messages.AsyncMessages.create).parameters) - {"self"}


def _sdk_timeout(timeouts: Timeouts, *, stream: bool) -> httpx2.Timeout:
    """Per-read timeout: a stream must show life within `first_token`; a plain call may take `total`."""
    read = min(timeouts.first_token, timeouts.total) if stream else timeouts.total
    return httpx2.Timeout(connect=timeouts.connect, read=read, write=read, pool=timeouts.connect)


class AnthropicProvider:
    """One Anthropic target. Safe to share: the SDK client and its httpx2 pool are concurrency-safe.

    `http_client` is the gateway's shared pool. It must be an `httpx2.AsyncClient`: anthropic SDK 2.x
    is built on `httpx2` and refuses `httpx` objects. Without one, the provider owns a private pool.
    """

    def __init__(
        self,
        name: str,
        spec: TargetSpec,
        http_client: httpx2.AsyncClient | None = None,
        *,
        min_cache_chars: int = DEFAULT_MIN_CACHE_CHARS,
    ) -> None:
        self.name = name
        self.spec = spec
        self.min_cache_chars = min_cache_chars
        self._api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        self._owns_client = http_client is None
        self._http = http_client or httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=512, max_keepalive_connections=64),
            timeout=httpx2.Timeout(spec.timeouts.total, connect=spec.timeouts.connect),
        )
        self._client = AsyncAnthropic(
            # A placeholder keeps the SDK from hunting for credentials elsewhere; calls without a
            # configured key are refused before any network traffic (see `_require_key`).
            api_key=self._api_key or "unconfigured",
            base_url=spec.base_url,
            max_retries=0,  # retries belong to the executor, which knows the whole plan
            http_client=self._http,
            default_headers=dict(spec.headers) or None,
        )

    def _require_key(self) -> None:
        if not self._api_key:
            raise AuthFailed(f"no Anthropic API key: environment variable {self.spec.api_key_env!r} is unset",
                             target=self.name)

    def _params(self, request: ProviderRequest) -> dict[str, Any]:
        body = {**request.body, "model": request.body.get("model") or self.spec.model}
        try:
            return to_anthropic(
                body,
                default_max_tokens=self.spec.max_output_tokens or DEFAULT_MAX_TOKENS,
                cache_prefix=request.prefix_key is not None,
                min_cache_chars=self.min_cache_chars,
            )
        except BadRequest as exc:
            exc.target = self.name
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadRequest(f"request cannot be translated for Anthropic: {exc}", target=self.name) from exc

    async def complete(self, request: ProviderRequest) -> Completion:
        self._require_key()
        params = self._params(request)
        try:
            async with asyncio.timeout(request.timeouts.total):
                message = await self._client.messages.create(
                    **sdk_kwargs(params, _SDK_PARAMS), timeout=_sdk_timeout(request.timeouts, stream=False)
                )
        except Exception as exc:
            raise map_error(exc, self.name) from exc
        return completion_from_message(message)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        """Opens the stream and reads through `message_start` before yielding, so a refused call
        raises its taxonomy error before the first byte and the executor can fail over invisibly."""
        self._require_key()
        params = self._params(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + request.timeouts.total
        first_token_deadline = min(deadline, started + request.timeouts.first_token)
        translator = StreamTranslator()
        upstream: anthropic.AsyncStream[Any] | None = None
        try:
            try:
                async with asyncio.timeout_at(first_token_deadline):
                    upstream = await self._client.messages.create(
                        **sdk_kwargs(params, _SDK_PARAMS), stream=True, timeout=_sdk_timeout(request.timeouts, stream=True)
                    )
                    pending: list[dict[str, Any]] = []
                    while not pending:  # up to and including message_start: nothing yielded yet
                        pending = translator.feed(await anext(upstream))
            except StopAsyncIteration:
                raise Unavailable("anthropic: stream ended before message_start", target=self.name) from None
            except Exception as exc:
                raise map_error(exc, self.name) from exc
            for chunk in pending:
                yield msgspec.json.encode(chunk)
            while not translator.finished:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(upstream)
                except StopAsyncIteration:
                    raise Unavailable("anthropic: stream ended before message_stop", target=self.name) from None
                except Exception as exc:
                    raise map_error(exc, self.name) from exc
                for chunk in translator.feed(event):
                    yield msgspec.json.encode(chunk)
        finally:
            if upstream is not None:
                await upstream.close()

    async def health(self) -> Health:
        """Cheap on purpose: probing the model would spend tokens; real failures trip the breaker."""
        if not self._api_key:
            return Health(ok=False, detail=f"environment variable {self.spec.api_key_env!r} is unset")
        return Health(ok=True, detail="api key configured")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()
