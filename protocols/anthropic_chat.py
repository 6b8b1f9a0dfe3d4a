"""Translation between OpenAI Chat Completions and Anthropic Messages, both directions of a call.

Requests: an OpenAI chat body becomes a Messages body (`to_anthropic`). Answers: a Messages
response becomes a `chat.completion` (`completion_from_message`), and a Messages event stream
becomes `chat.completion.chunk` payloads (`StreamTranslator`). All of it works on plain JSON
values, so the same code serves the SDK-free pass-through and tests without a network.
What cannot be translated raises `Untranslatable` (the caller answers 400).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from protocols import fidelity
from protocols.errors import Untranslatable
from protocols.usage import Usage

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
    if isinstance(image, dict):
        fidelity.unread(image, _IMAGE_KEYS, "image_url")  # `detail`: Anthropic picks the resolution itself
    if not isinstance(url, str) or not url:
        raise Untranslatable("image_url part without a url")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.match(url)
    if match is None or ";base64" not in match["params"]:
        raise Untranslatable("image_url must be an http(s) URL or a base64 data: URL")
    return {"type": "image", "source": {"type": "base64", "media_type": match["media"], "data": match["data"]}}


def _file_block(part: dict[str, Any]) -> dict[str, Any]:
    data = (part.get("file") or {}).get("file_data", "")
    match = _DATA_URL.match(data) if isinstance(data, str) else None
    if match is None or match["media"] != "application/pdf" or ";base64" not in match["params"]:
        raise Untranslatable("file parts must carry a base64 PDF data: URL (file ids are not supported)")
    block = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": match["data"]}}
    filename = (part.get("file") or {}).get("filename")
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


_IMAGE_KEYS = frozenset({"url"})
# What each part type is read for (anything else it carries is named as dropped).
_PART_KEYS: dict[str, frozenset[str]] = {"text": frozenset({"type", "text"}), "refusal": frozenset({"type", "refusal"}),
                                         "image_url": frozenset({"type", "image_url"}), "file": frozenset({"type", "file"})}
_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "refusal"})

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
            raise Untranslatable(f"unsupported content part type {kind!r} for an Anthropic target")
        fidelity.unread(part, _PART_KEYS[kind], kind)
        block = translate(part)
        if block["type"] != "text" or block["text"]:
            blocks.append(block)
    return blocks


def _tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    if call.get("type", "function") != "function":
        raise Untranslatable(f"tool call {call.get('id')!r} is a {call.get('type')!r} tool call; "
                             "an Anthropic target takes function tools only")
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError as exc:
        raise Untranslatable(f"tool call {call.get('id')!r} has arguments that are not valid JSON") from exc
    if not isinstance(parsed, dict):
        raise Untranslatable(f"tool call {call.get('id')!r} arguments must be a JSON object")
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
        if isinstance(message.get("refusal"), str) and message["refusal"]:  # what the assistant said
            blocks.append({"type": "text", "text": message["refusal"]})
        blocks += [_tool_use_block(call) for call in message.get("tool_calls") or []]
    return blocks


def _name_non_text(role: str, content: Any) -> None:
    """Anthropic's `system` is text only: other parts of a system message are named as dropped."""
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "refusal"):
            fidelity.dropped(f"{role}.{kind}")


def _translate_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split off system text and merge consecutive same-role turns, as the Messages API requires."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        fidelity.unread(message, _MESSAGE_KEYS, "messages")  # `name`: Anthropic turns have no author name
        if role in ("system", "developer"):
            _name_non_text(role, message.get("content"))
            text = _text_of(message.get("content"))
            if text:
                system.append({"type": "text", "text": text})
            continue
        if role not in _ROLE_FOR:
            raise Untranslatable(f"unsupported message role {role!r} for an Anthropic target")
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
            raise Untranslatable(f"only function tools are supported for an Anthropic target, got {tool.get('type')!r}")
        fidelity.unread(tool, ("type", "function"), "tools")
        fidelity.unread(function, _FUNCTION_KEYS, "tools")  # `strict`: not sent
        entry = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        translated.append(entry)
    return translated


_FUNCTION_KEYS = frozenset({"name", "description", "parameters"})


def _allowed_subset(tools: list[dict[str, Any]], choice: Any) -> list[dict[str, Any]]:
    """An `allowed_tools` tool_choice: Anthropic has no subset, so only the allowed tools are sent
    (the mode carries over in `_translate_tool_choice`); the model cannot call the others either way."""
    if not (isinstance(choice, dict) and choice.get("type") == "allowed_tools"):
        return tools
    allowed = (choice.get("allowed_tools") or {}).get("tools") or []
    names = [((entry.get("function") or {}).get("name") if isinstance(entry, dict) else None) for entry in allowed]
    offered = {tool["name"] for tool in tools}
    unknown = [name for name in names if name not in offered]
    if unknown:
        raise Untranslatable(f"tool_choice.allowed_tools names {unknown[0]!r}, which is not among the function tools")
    fidelity.mapped("tool_choice")
    fidelity.dropped(*(f"tools.{tool['name']}" for tool in tools if tool["name"] not in names))
    return [tool for tool in tools if tool["name"] in names]


def _translate_tool_choice(choice: Any, parallel_tool_calls: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        translated = dict(TOOL_CHOICES.get(choice, TOOL_CHOICES["auto"]))
    elif isinstance(choice, dict) and choice.get("type", "function") == "function" \
            and (choice.get("function") or {}).get("name"):
        translated = {"type": "tool", "name": choice["function"]["name"]}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":  # a subset: the mode is what carries over
        mode = (choice.get("allowed_tools") or {}).get("mode")
        translated = dict(TOOL_CHOICES["required" if mode == "required" else "auto"])
    elif isinstance(choice, dict) and choice.get("type") == "custom":
        raise Untranslatable("tool_choice of type 'custom' names a custom tool; an Anthropic target takes function tools only")
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
    kept = [s for s in values if isinstance(s, str) and s.strip()]  # Anthropic refuses whitespace-only ones
    if len(kept) != len(values):
        fidelity.dropped("stop")
    return kept


def _temperature(value: Any) -> float:
    """Anthropic's range is [0, 1], OpenAI's [0, 2]: a value outside is clamped, and named."""
    temperature = float(value)
    clamped = min(1.0, max(0.0, temperature))
    if clamped != temperature:
        fidelity.dropped("temperature")
    return clamped


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
    What changes on the way is reported to `protocols.fidelity`: a clamped temperature, removed
    stop sequences, keys of messages, parts and tools Anthropic has no place for (`name`,
    `detail`, `strict`), tools outside an `allowed_tools` subset (only the allowed ones are sent).

    `cache_prefix` asks for `cache_control` breakpoints on the static prefix (last system block and
    last tool) when that prefix is long enough to be cached at all. `stream` is not set here.
    """
    if int(body.get("n") or 1) != 1:
        raise Untranslatable("n > 1 is not supported by Anthropic targets")
    system, messages = _translate_messages(list(body.get("messages") or []))
    if not messages:
        raise Untranslatable("at least one user or assistant message is required")
    instruction = _json_instruction(body.get("response_format"))
    if instruction:
        fidelity.mapped("response_format")  # no JSON mode: asked for in the system prompt
        system.append({"type": "text", "text": instruction})
    params: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": int(body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens),
    }
    tools = _allowed_subset(_translate_tools(list(body.get("tools") or [])), body.get("tool_choice"))
    if tools:
        params["tools"] = tools
        choice = _translate_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            params["tool_choice"] = choice
    if system:
        params["system"] = system
    if body.get("temperature") is not None:
        params["temperature"] = _temperature(body["temperature"])
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

def usage_from(prompt: int, cache_read: int, cache_creation: int, output: int) -> tuple[Usage, dict[str, Any]]:
    """Anthropic reports uncached, cache-read and cache-write input separately; OpenAI sums them."""
    usage = Usage(prompt_tokens=prompt + cache_read + cache_creation, completion_tokens=output,
                  cached_tokens=cache_read, cache_write_tokens=cache_creation)
    wire = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        # Cache writes as OpenAI-compatible gateways report them (OpenAI itself has no cache writes).
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_creation_tokens": usage.cache_write_tokens},
    }
    return usage, wire


def message_usage(usage: dict[str, Any] | None) -> tuple[Usage, dict[str, Any]]:
    u = usage or {}
    return usage_from(u.get("input_tokens") or 0, u.get("cache_read_input_tokens") or 0,
                      u.get("cache_creation_input_tokens") or 0, u.get("output_tokens") or 0)


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id", ""),
        "type": "function",
        "function": {"name": block.get("name", ""), "arguments": json.dumps(block.get("input") or {}, separators=(",", ":"))},
    }


def completion_from_message(message: dict[str, Any], *, created: int | None = None) -> tuple[dict[str, Any], Usage]:
    """A finished Anthropic message as an OpenAI `chat.completion` document (thinking is not exposed)."""
    content = message.get("content") or []
    text = "".join(block.get("text", "") for block in content if block.get("type") == "text")
    tool_calls = [_tool_call(block) for block in content if block.get("type") == "tool_use"]
    reply: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else ""), "refusal": None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    usage, wire_usage = message_usage(message.get("usage"))
    document = {
        "id": message.get("id", ""),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": message.get("model", ""),
        "choices": [
            {"index": 0, "message": reply, "finish_reason": FINISH_REASONS.get(message.get("stop_reason"), "stop"),
             "logprobs": None}
        ],
        "usage": wire_usage,
    }
    return document, usage


class StreamTranslator:
    """Turns Messages stream events (decoded JSON) into OpenAI chunk dicts; one instance per stream.

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
        self._handlers: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "content_block_stop": self._block_stop,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
        }

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        handler = self._handlers.get(event.get("type", ""))
        return handler(event) if handler is not None else []  # ping and future events: nothing

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def _take_usage(self, usage: dict[str, Any] | None) -> None:
        usage = usage or {}
        for key in self._input:
            value = usage.get(key)
            if value is not None:  # message_delta repeats cumulative counts; never add them up
                self._input[key] = value
        self._output_tokens = usage.get("output_tokens") or self._output_tokens
        self.usage, _ = self._usage()

    def _usage(self) -> tuple[Usage, dict[str, Any]]:
        return usage_from(self._input["input_tokens"], self._input["cache_read_input_tokens"],
                          self._input["cache_creation_input_tokens"], self._output_tokens)

    def _message_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        message = event.get("message") or {}
        self.id, self.model = message.get("id", ""), message.get("model", "")
        self._take_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        block = event.get("content_block") or {}
        if block.get("type") == "text":
            return [self._chunk({"content": block["text"]})] if block.get("text") else []
        if block.get("type") != "tool_use":
            return []  # thinking and server-tool blocks are not part of the OpenAI answer
        index = event.get("index", 0)
        position = self._tool_index[index] = len(self._tool_index)
        self._tool_arguments[index] = ""
        self._tool_initial_input[index] = block.get("input")
        call = {"index": position, "id": block.get("id", ""), "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""}}
        return [self._chunk({"tool_calls": [call]})]

    def _arguments_chunk(self, block_index: int, fragment: str) -> dict[str, Any]:
        self._tool_arguments[block_index] += fragment
        call = {"index": self._tool_index[block_index], "function": {"arguments": fragment}}
        return self._chunk({"tool_calls": [call]})

    def _block_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        delta = event.get("delta") or {}
        index = event.get("index", 0)
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if delta.get("type") == "input_json_delta" and index in self._tool_index and delta.get("partial_json"):
            return [self._arguments_chunk(index, delta["partial_json"])]
        return []

    def _block_stop(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """A tool call that streamed no arguments still owes the caller a JSON object."""
        index = event.get("index", 0)
        if index not in self._tool_index or self._tool_arguments[index]:
            return []
        initial = self._tool_initial_input.get(index) or {}
        return [self._arguments_chunk(index, json.dumps(initial, separators=(",", ":")))]

    def _message_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self._take_usage(event.get("usage"))
        return [self._chunk({}, FINISH_REASONS.get((event.get("delta") or {}).get("stop_reason"), "stop"))]

    def _message_stop(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.finished = True
        _, wire_usage = self._usage()
        return [{"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [], "usage": wire_usage}]
