"""Responses API callers on a Chat Completions upstream (self-hosted engines speak chat; Anthropic
targets are reached through the chat pivot, Chat → Messages, by `translate.find`).

Request: `instructions` and the input items become chat messages (function_call items become the
assistant's `tool_calls`, consecutive ones merged into one turn as parallel calls;
function_call_output items become `tool` messages; reasoning items are dropped, a chat upstream
has nowhere to put them), function tools become chat tools, custom tools (free-form input, e.g.
Codex's `apply_patch`) become chat functions with one string argument `input` (a grammar, if the
tool has one, is stated in the description; named in `x-gateway-mapped`) and their calls come
back as `custom_tool_call` items, an `allowed_tools` tool_choice becomes chat's own, a tool output
holding images keeps them for the next hop of a chain (Anthropic takes images in tool results) and
a chat upstream gets its text with the images named as dropped, `text.verbosity` becomes
`verbosity`, `text.format` becomes
`response_format`, `max_output_tokens` becomes `max_tokens`. Hosted tools (web_search,
file_search, …) and items only OpenAI can resolve (`item_reference`, hosted tool calls) raise
`Untranslatable`: the caller gets a 400 naming them, never a silently different request.

Response and stream: a `chat.completion` (or its chunks) becomes a `response` object (or the
documented event sequence, protocols/responses_events.py) with message and function_call items
and the Responses `usage`; a chat refusal becomes a `refusal` content part (streamed as
`response.refusal.delta` / `.done`). A translator is shared by every request to a target, so the request's
parameters a response object repeats (`instructions`, `tools`, `temperature`, …) travel from
`request` to `response`/`stream` in a context variable: both run in the same task, per request.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from protocols import fidelity
from protocols import responses_tools
from protocols.api import Api
from protocols.errors import Untranslatable, translating
from protocols.responses_events import Builder, new_id, response_object, usage_object
from protocols.text import text_of
from protocols.usage import Usage

if TYPE_CHECKING:  # protocols.translate registers this module: no import cycle at run time
    from protocols.translate import Hints

# Request fields a response object repeats (translated answers echo them like OpenAI's do).
ECHOED = ("instructions", "max_output_tokens", "metadata", "parallel_tool_calls", "previous_response_id",
          "store", "temperature", "text", "tool_choice", "tools", "top_p", "truncation", "user", "reasoning",
          "service_tier", "max_tool_calls", "top_logprobs")
_ECHO: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("responses_echo", default=None)

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_FINISH = {"length": ("incomplete", "max_output_tokens"), "content_filter": ("incomplete", "content_filter")}


def echo_of(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ECHOED if body.get(k) is not None}


# -- request --------------------------------------------------------------------------------------

def _part(part: Any, strict: bool) -> dict[str, Any] | None:
    """One Responses content part as a chat content part (None: drop it)."""
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal") or ""}
    if kind == "input_image" and part.get("image_url"):
        image = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and part.get("file_data"):
        return {"type": "file", "file": {k: part[k] for k in ("file_data", "filename") if part.get(k)}}
    if strict:
        what = f"{kind} by file_id" if kind in ("input_image", "input_file") else kind
        raise Untranslatable(f"content part '{what}' can only be served by an OpenAI target")
    return None


def _content(content: Any, strict: bool) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = [p for p in (_part(part, strict) for part in content or []) if p is not None]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts) if len(parts) == 1 else \
            ("\n".join(p["text"] for p in parts) if parts else "")
    return parts


def _output_text(output: Any) -> str:
    return output if isinstance(output, str) else (text_of(output) or "")


def _tool_output(output: Any, strict: bool) -> str | list[dict[str, Any]]:
    """A tool's output: text, or chat parts when it holds images or files (only the next hop of a
    chain can carry those; `_text_only_tool_messages` keeps them from chat upstreams)."""
    if isinstance(output, str) or not any(isinstance(p, Mapping) and p.get("type") in ("input_image", "input_file")
                                          for p in output or []):
        return _output_text(output)
    return _content(output, strict)


def _text_only_tool_messages(chat: dict[str, Any]) -> None:
    """Chat tool messages take text only: images and files in tool outputs are dropped, and named."""
    for message in chat["messages"]:
        if message["role"] == "tool" and isinstance(message["content"], list):
            for part in message["content"]:
                if part["type"] != "text":
                    fidelity.dropped("function_call_output." + {"image_url": "input_image"}.get(part["type"], "input_file"))
            message["content"] = "\n".join(p["text"] for p in message["content"] if p["type"] == "text")


def _append_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":  # parallel calls: one assistant turn
        last.setdefault("tool_calls", []).append(call)
        if last.get("content") == "":
            last["content"] = None
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def messages_of(body: Mapping[str, Any], *, strict: bool = True) -> list[dict[str, Any]]:
    """Chat messages for `instructions` + `input`. Lenient (`strict=False`) for routing and
    estimates: what cannot be translated is skipped instead of refused."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    for item in items or []:
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            if strict and item.get("role") not in _ROLES:
                raise Untranslatable(f"message role {item.get('role')!r} can only be served by an OpenAI target")
            role = _ROLES.get(item.get("role"), "user")
            messages.append({"role": role, "content": _content(item.get("content"), strict)})
        elif kind == "function_call":
            name = responses_tools.chat_name(item.get("name"), item.get("namespace"))
            _append_call(messages, {"id": item.get("call_id") or item.get("id"), "type": "function",
                                    "function": {"name": name, "arguments": item.get("arguments") or ""}})
        elif kind == "custom_tool_call":
            name = responses_tools.chat_name(item.get("name"), item.get("namespace"))
            _append_call(messages, {"id": item.get("call_id") or item.get("id"), "type": "function",
                                    "function": {"name": name,
                                                 "arguments": json.dumps({"input": item.get("input") or ""})}})
        elif kind == "additional_tools":
            continue  # tools, not turns: they join the request's tools (responses_tools.build)
        elif isinstance(kind, str) and responses_tools.is_client_item(item):
            _client_item(messages, item, strict)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": _tool_output(item.get("output"), strict)})
        elif kind == "reasoning":
            continue  # encrypted or summarised reasoning has no place in a chat request
        elif strict:
            raise Untranslatable(f"input item '{kind}' can only be served by an OpenAI target")
    return messages


def _client_item(messages: list[dict[str, Any]], item: Mapping[str, Any], strict: bool) -> None:
    """A client-executed tool's call or output (e.g. `tool_search_call`) as a chat tool call or result."""
    try:
        if responses_tools.CLIENT_CALLS.match(item["type"]):
            _append_call(messages, responses_tools.client_call(item))
        else:
            messages.append(responses_tools.client_output(item))
    except ValueError as exc:
        if strict:
            raise Untranslatable(str(exc)) from None


_CUSTOM_PARAMETERS = {"type": "object", "properties": {"input": {"type": "string", "description": "The tool's raw input."}},
                      "required": ["input"], "additionalProperties": False}


def _custom_function(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A custom tool (free-form text input) as a chat function taking that text as `input`."""
    description = tool.get("description") or ""
    fmt = tool.get("format") if isinstance(tool.get("format"), Mapping) else {}
    if fmt.get("type") == "grammar" and fmt.get("definition"):
        description += (f"\n\nThe `input` argument must be text in this {fmt.get('syntax') or ''} grammar:\n"
                        f"{fmt['definition']}")
    function = {"name": tool.get("name"), "parameters": _CUSTOM_PARAMETERS}
    if description.strip():
        function["description"] = description.strip()
    return {"type": "function", "function": function}


def custom_input(arguments: str) -> str:
    """The free-form input of a custom tool call from the chat function's JSON arguments (a model
    that did not answer `{"input": "…"}` has its raw arguments passed on as they are)."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    return parsed["input"] if isinstance(parsed, dict) and isinstance(parsed.get("input"), str) else arguments


def tools_of(tools: Any, *, strict: bool = True) -> list[dict[str, Any]]:
    out = []
    for tool in tools or []:
        if isinstance(tool, Mapping) and tool.get("type") == "function":
            function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
            out.append({"type": "function", "function": function})
        elif isinstance(tool, Mapping) and tool.get("type") == "custom" and tool.get("name"):
            out.append(_custom_function(tool))
        elif strict:
            kind = tool.get("type") if isinstance(tool, Mapping) else type(tool).__name__
            raise Untranslatable(f"hosted tool '{kind}' is only available on OpenAI targets; "
                                 "this model's target supports function tools only")
    return out


def _tool_choice(choice: Any, tool_map: responses_tools.ToolMap) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") in ("function", "custom"):
        return {"type": "function", "function": {"name": _chosen(choice, tool_map)}}
    if isinstance(choice, Mapping) and choice.get("type") == "allowed_tools":  # chat has the same subset
        allowed = [{"type": "function", "function": {"name": _chosen(tool, tool_map)}}
                   for tool in choice.get("tools") or [] if isinstance(tool, Mapping)]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.get("mode") or "auto", "tools": allowed}}
    raise Untranslatable(f"tool_choice of type '{choice.get('type')}' is only available on OpenAI targets")


def _chosen(ref: Mapping[str, Any], tool_map: responses_tools.ToolMap) -> str:
    """The chat function a tool_choice names: the declared tool of that name (in its namespace, or
    the one namespace that declares it), as `responses_tools.build` named it."""
    name, namespace = ref.get("name"), ref.get("namespace")
    if namespace:
        return responses_tools.chat_name(name, namespace)
    declared = [chat for chat, route in tool_map.routes.items() if route.name == name]
    return declared[0] if len(declared) == 1 else responses_tools.chat_name(name)


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise Untranslatable(f"text.format of type '{fmt['type']}' cannot be translated")


def to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A chat completions request for a Responses request (strict: refuses what it cannot say)."""
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages_of(body)}
    if not chat["messages"]:
        raise Untranslatable("the request has no input to send")
    tools, tool_map = responses_tools.build(body, lambda tool: next(iter(tools_of([tool])), None))
    responses_tools.remember(tool_map)
    if tools:
        chat["tools"] = tools
        if body.get("tool_choice") is not None:
            chat["tool_choice"] = _tool_choice(body["tool_choice"], tool_map)
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    if isinstance(body.get("text"), Mapping) and body["text"].get("verbosity") is not None:
        chat["verbosity"] = body["text"]["verbosity"]
    for source, target in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"),
                           ("top_p", "top_p"), ("user", "user")):
        if body.get(source) is not None:
            chat[target] = body[source]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# -- response -------------------------------------------------------------------------------------

def _usage(chat_usage: Any) -> tuple[dict[str, Any], Usage]:
    usage = chat_usage if isinstance(chat_usage, Mapping) else {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return usage_object(prompt, completion, cached, reasoning), Usage(prompt, completion, cached)


def _status(finish_reason: str | None) -> tuple[str, str | None]:
    return _FINISH.get(finish_reason or "stop", ("completed", None))


def response_from_chat(completion: Mapping[str, Any], echo: Mapping[str, Any]) -> tuple[dict[str, Any], Usage]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    response = response_object(completion.get("model") or "", created_at=completion.get("created"), echo=dict(echo))
    builder = Builder(response)
    if message.get("content") or message.get("refusal"):
        index, _ = builder.open_message()
        for kind, text in (("output_text", message.get("content")), ("refusal", message.get("refusal"))):
            if text:
                builder.open_part(index, kind)
                builder.part_delta(index, text)
        builder.done_item(index)
    tool_map = responses_tools.current()
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        name, arguments = function.get("name") or "", function.get("arguments") or ""
        route = tool_map.route(name)
        if route.kind == "client":
            item = responses_tools.client_call_item(route, call.get("id") or new_id("call"), arguments, new_id("tsc"))
            builder.done_item(builder.add_item(item)[0])
            continue
        if route.kind == "custom":
            index, _ = builder.open_custom_call(call.get("id") or new_id("call"), route.name)
            builder.custom_delta(index, custom_input(arguments))
        else:
            index, _ = builder.open_call(call.get("id") or new_id("call"), route.name)
            builder.call_delta(index, arguments)
        _namespaced(builder, index, route)
        builder.done_item(index)
    usage, books = _usage(completion.get("usage"))
    status, reason = _status(choice.get("finish_reason"))
    builder.finish(status, usage=usage, incomplete_reason=reason)
    return builder.final(), books


def _namespaced(builder: Builder, index: int, route: responses_tools.Route) -> None:
    """A call to a namespaced tool carries its namespace, as OpenAI's items do."""
    if route.namespace:
        builder.output[index]["namespace"] = route.namespace


class _StreamState:
    """Chat chunks in, Responses events out (one per request)."""

    def __init__(self, echo: Mapping[str, Any]) -> None:
        self.echo = dict(echo)
        self.builder: Builder | None = None
        self.message: int | None = None  # output index of the open message item
        self.part: str | None = None  # the kind of its open content part: "output_text" or "refusal"
        self.calls: dict[int, int] = {}  # chat tool-call index -> output index
        self.tool_map = responses_tools.current()
        self.custom_arguments: dict[int, str] = {}  # output index -> JSON arguments so far (custom tools)
        self.client_calls: dict[int, tuple[responses_tools.Route, str]] = {}  # output index -> (route, call id)
        self.finish_reason: str | None = None
        self.usage: Any = None

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self.builder is None:
            response = response_object(chunk.get("model") or "", created_at=chunk.get("created"), echo=self.echo)
            self.builder = Builder(response)
            events.extend(self.builder.start())
        builder = self.builder
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 has no Responses equivalent; the first choice is the answer
            delta = choice.get("delta") or {}
            for kind in ("content", "refusal"):
                if delta.get(kind):
                    events.extend(self._say("output_text" if kind == "content" else "refusal", delta[kind]))
            for call in delta.get("tool_calls") or []:
                events.extend(self._call(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _say(self, kind: str, text: str) -> list[dict[str, Any]]:
        """Text or refusal into the open message (opened, or its part switched, as needed)."""
        builder = self.builder
        events: list[dict[str, Any]] = []
        if self.message is None:
            self.message, added = builder.open_message()
            events.append(added)
        if self.part != kind:
            if self.part is not None:
                events.extend(builder.close_part(self.message))
            events.append(builder.open_part(self.message, kind))
            self.part = kind
        events.append(builder.part_delta(self.message, text))
        return events

    def _call(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        builder = self.builder
        events: list[dict[str, Any]] = []
        function = call.get("function") or {}
        slot = call.get("index", 0)
        if slot not in self.calls:
            events.extend(self._close_message())
            route = self.tool_map.route(function.get("name") or "")
            call_id = call.get("id") or new_id("call")
            if route.kind == "client":  # its item is whole at the end: arguments are an object
                self.calls[slot], added = builder.add_item(
                    responses_tools.client_call_item(route, call_id, "{}", new_id("tsc")) | {"status": "in_progress"})
                self.client_calls[self.calls[slot]] = (route, call_id)
                self.custom_arguments[self.calls[slot]] = ""
            elif route.kind == "custom":
                self.calls[slot], added = builder.open_custom_call(call_id, route.name)
                self.custom_arguments[self.calls[slot]] = ""
            else:
                self.calls[slot], added = builder.open_call(call_id, route.name)
            _namespaced(builder, self.calls[slot], route)
            added["item"] = dict(builder.output[self.calls[slot]], status="in_progress")
            events.append(added)
        index = self.calls[slot]
        if function.get("arguments"):
            if index in self.custom_arguments:  # JSON fragments: the input is known once they are all in
                self.custom_arguments[index] += function["arguments"]
            else:
                events.append(builder.call_delta(index, function["arguments"]))
        return events

    def _close_call(self, index: int) -> list[dict[str, Any]]:
        if index in self.client_calls:
            route, call_id = self.client_calls[index]
            item = self.builder.output[index]
            final = responses_tools.client_call_item(route, call_id, self.custom_arguments[index], item["id"])
            return [self.builder.done_item(index, final=final)]
        if index not in self.custom_arguments:
            return self.builder.close_call(index)
        return [self.builder.custom_delta(index, custom_input(self.custom_arguments[index])),
                *self.builder.close_custom_call(index)]

    def _close_message(self) -> list[dict[str, Any]]:
        if self.message is None:
            return []
        index, self.message, self.part = self.message, None, None
        return [*self.builder.close_part(index), self.builder.done_item(index)]

    def end(self) -> list[dict[str, Any]]:
        if self.builder is None or self.finish_reason is None:
            raise EOFError("the upstream stream ended before its finish_reason")
        events = self._close_message()
        for index in sorted(self.calls.values()):
            events.extend(self._close_call(index))
        usage, _ = _usage(self.usage)
        status, reason = _status(self.finish_reason)
        events.append(self.builder.finish(status, usage=usage, incomplete_reason=reason))
        return events


# Keys of input items and content parts a chat request has a place for (an item's `status` is
# bookkeeping; its `id` is named: a chat upstream never sees it, except as a missing call_id).
_ITEM_KEYS: dict[str, frozenset[str]] = {
    "message": frozenset({"type", "role", "content", "status"}),
    "function_call": frozenset({"type", "call_id", "name", "arguments", "status"}),
    "custom_tool_call": frozenset({"type", "call_id", "name", "input", "status"}),
    "function_call_output": frozenset({"type", "call_id", "output", "status"}),
    "custom_tool_call_output": frozenset({"type", "call_id", "output", "status"}),
}
_PART_KEYS: dict[str, frozenset[str]] = {
    "input_text": frozenset({"type", "text"}), "output_text": frozenset({"type", "text", "logprobs"}),
    "text": frozenset({"type", "text"}), "refusal": frozenset({"type", "refusal"}),
    "input_image": frozenset({"type", "image_url", "detail"}), "input_file": frozenset({"type", "file_data", "filename"}),
}


def _report_unread(body: Mapping[str, Any]) -> None:
    """Name the keys of input items and their content parts that no chat field carries (e.g. an
    earlier answer's `annotations`)."""
    for item in body.get("input") if isinstance(body.get("input"), list) else []:
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type") or ("message" if "role" in item else None)
        if isinstance(kind, str) and kind in _ITEM_KEYS:
            fidelity.unread(item, _ITEM_KEYS[kind] | ({"id"} if not item.get("call_id") else set()), kind)
        parts = item.get("content") if kind == "message" else item.get("output") if kind == "function_call_output" else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, Mapping) and isinstance(part.get("type"), str) and part["type"] in _PART_KEYS:
                fidelity.unread(part, _PART_KEYS[part["type"]], part["type"])


class ResponsesToChat:
    """OpenAI Responses callers on an OpenAI Chat Completions upstream."""

    source = Api.RESPONSES
    target = Api.CHAT
    # What the chat → Messages hop of a chain names, in Responses terms.
    pivot_names = {"image_url.detail": "input_image.detail", "response_format": "text.format",
                   "verbosity": "text.verbosity", "stop": "stop", "max_tokens": "max_output_tokens",
                   "tools.strict": "tools.strict"}
    wants_prompt_count = False  # `response.created` carries no usage
    # Fields a chat upstream is told (or the gateway itself serves: store, metadata, previous_response_id).
    TRANSLATED = frozenset({"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
                            "max_output_tokens", "temperature", "top_p", "user", "stream", "store", "metadata",
                            "previous_response_id"})

    def dropped(self, body: dict[str, Any]) -> list[str]:
        """What the caller sent that the target will not see (`x-gateway-dropped`)."""
        dropped = sorted(key for key in body if key not in self.TRANSLATED)
        items = body.get("input")
        if isinstance(items, list) and any(isinstance(i, Mapping) and i.get("type") == "reasoning" for i in items):
            dropped.append("input.reasoning")
        return dropped

    def request(self, body: dict[str, Any], hints: Hints) -> dict[str, Any]:
        _ECHO.set(echo_of(body))
        with translating("a chat upstream"):
            chat = to_chat(body)
        _report_unread(body)
        if any(route.kind == "custom" for route in responses_tools.current().routes.values()):
            fidelity.mapped("tools.custom")  # free-form input as a function's one string argument
        if not hints.pivot:
            _text_only_tool_messages(chat)
        return chat

    def response(self, body: bytes) -> tuple[bytes, Usage]:
        document, usage = response_from_chat(msgspec.json.decode(body), _ECHO.get() or {})
        return msgspec.json.encode(document), usage

    async def stream(self, payloads: AsyncIterator[bytes], *, prompt_tokens: int | None = None) -> AsyncIterator[bytes]:
        from protocols.translate import UpstreamStreamError

        state = _StreamState(_ECHO.get() or {})
        encode = msgspec.json.encode
        async for payload in payloads:  # nothing is sent before the upstream's first chunk: failover stays open
            chunk = msgspec.json.decode(payload)
            if isinstance(chunk, dict) and "error" in chunk:
                raise UpstreamStreamError(chunk)
            for event in state.feed(chunk):
                yield encode(event)
        for event in state.end():
            yield encode(event)
