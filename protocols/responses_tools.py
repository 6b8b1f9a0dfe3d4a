"""Responses tools that have a faithful chat equivalent beyond plain functions, both ways.

Coding agents declare tools in shapes a chat upstream has never heard of; each becomes plain
chat functions going up, and each call coming back is rebuilt as the item the caller declared:

- **namespaces** (`{"type": "namespace", "name": "collaboration", "tools": [...]}`): each tool
  becomes a function named `<namespace>__<name>` (the default namespace `functions` keeps the
  bare name); its calls come back as `function_call` / `custom_tool_call` items carrying
  `namespace`, as OpenAI sends them.
- **`additional_tools` input items** (Codex's "responses-lite": its tools arrive inside `input`,
  not in `tools`): their tools join the chat request's tools, wherever the item sits.
- **client-executed tool types** (`{"type": "tool_search", "execution": "client"}`: the caller runs
  them itself): a function named after the type; its calls come back as `<type>_call` items
  (`execution: "client"`, `arguments` an object) and the caller's `<type>_output` items go up as
  tool results. Tools a `tool_search_output` loaded are declared to the upstream too.

Anything else that is not a function or custom tool stays the translator's to refuse.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_NAMESPACE = "functions"
_CHAT_NAME = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAME = 64  # chat function names: ^[a-zA-Z0-9_-]{1,64}$
# What a client-executed tool's items are called (OpenAI's naming: `<type>_call`, `<type>_output`).
_CLIENT_DESCRIPTIONS = {
    "tool_search": "Search the tools available to you and load the ones that match; the caller runs the search.",
}
_DEFAULT_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": True}


@dataclass(frozen=True, slots=True)
class Route:
    """What one chat function name stands for in the caller's terms."""

    kind: str  # "function", "custom" or "client"
    name: str  # the tool's own name (for a client tool: its type)
    namespace: str | None = None


@dataclass(slots=True)
class ToolMap:
    """The chat functions of one request and the Responses tool each one is."""

    routes: dict[str, Route] = field(default_factory=dict)

    def route(self, chat_name: str) -> Route:
        return self.routes.get(chat_name) or Route("function", chat_name)


_MAP: contextvars.ContextVar[ToolMap | None] = contextvars.ContextVar("responses_tool_map", default=None)


def current() -> ToolMap:
    """The tool map of the request being translated (set by `remember`)."""
    return _MAP.get() or ToolMap()


def remember(tool_map: ToolMap) -> None:
    _MAP.set(tool_map)


def is_client_tool(tool: Any) -> bool:
    return isinstance(tool, Mapping) and tool.get("execution") == "client" and isinstance(tool.get("type"), str)


def chat_name(name: Any, namespace: Any = None) -> str:
    """The chat function name for a (namespaced) tool: `ns__name`, the bare name in `functions`."""
    base = str(name or "")
    if isinstance(namespace, str) and namespace and namespace != DEFAULT_NAMESPACE:
        base = f"{namespace}__{base}"
    safe = _CHAT_NAME.sub("_", base) or "tool"
    if len(safe) > _MAX_NAME:  # still unique: a short hash of the whole name
        safe = safe[:_MAX_NAME - 9] + "_" + hashlib.sha256(base.encode()).hexdigest()[:8]
    return safe


def _input_tools(body: Mapping[str, Any], item_type: str) -> list[Any]:
    """The tools carried by the input items of `item_type`, in order."""
    items = body.get("input")
    out: list[Any] = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, Mapping) and item.get("type") == item_type and isinstance(item.get("tools"), list):
            out.extend(item["tools"])
    return out


def additional_tools(body: Mapping[str, Any]) -> list[Any]:
    """The tools declared by `additional_tools` input items, in order."""
    return _input_tools(body, "additional_tools")


def loaded_tools(body: Mapping[str, Any]) -> list[Any]:
    """Tools a client-executed `tool_search_output` item handed to the model."""
    return _input_tools(body, "tool_search_output")


def declared(body: Mapping[str, Any]) -> Iterator[tuple[str | None, Any]]:
    """Every tool the request declares, namespaces opened: (namespace, tool)."""
    def walk(tools: list[Any], namespace: str | None) -> Iterator[tuple[str | None, Any]]:
        for tool in tools:
            if isinstance(tool, Mapping) and tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
                yield from walk(tool["tools"], str(tool.get("name") or "") or None)
            else:
                yield namespace, tool

    top = body.get("tools")
    yield from walk([*(top if isinstance(top, list) else []), *additional_tools(body), *loaded_tools(body)], None)


def client_function(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A client-executed tool as a chat function named after its type."""
    kind = tool["type"]
    parameters = tool.get("parameters") if isinstance(tool.get("parameters"), Mapping) else _DEFAULT_PARAMETERS
    description = tool.get("description") or _CLIENT_DESCRIPTIONS.get(kind) or f"The caller's `{kind}` tool."
    return {"type": "function", "function": {"name": chat_name(kind), "description": description,
                                             "parameters": parameters}}


def build(body: Mapping[str, Any], leaf: Callable[[Any], dict[str, Any] | None]) -> tuple[list[dict[str, Any]], ToolMap]:
    """The chat tools for every declared tool, and the map back. `leaf` turns one function or
    custom tool into its chat function (None: not one of those; it refuses what it must)."""
    tools: list[dict[str, Any]] = []
    tool_map = ToolMap()
    for namespace, tool in declared(body):
        if is_client_tool(tool):
            function, route = client_function(tool), Route("client", tool["type"], namespace)
        else:
            function = leaf(tool)
            if function is None:
                continue
            kind = "custom" if tool.get("type") == "custom" else "function"
            route = Route(kind, str(function["function"].get("name") or ""), namespace)
        name = chat_name(route.name, namespace)
        if name in tool_map.routes:
            continue  # declared twice (e.g. in `tools` and again by a search): once is enough
        function = {**function, "function": {**function["function"], "name": name}}
        tools.append(function)
        tool_map.routes[name] = route
    return tools, tool_map


# -- history: the caller's earlier client-tool items ----------------------------------------------

CLIENT_CALLS = re.compile(r"^(?P<kind>[a-z][a-z0-9_]*)_call$")
CLIENT_OUTPUTS = re.compile(r"^(?P<kind>[a-z][a-z0-9_]*)_output$")


def is_client_item(item: Mapping[str, Any]) -> bool:
    return item.get("execution") == "client" and isinstance(item.get("type"), str)


def client_call(item: Mapping[str, Any]) -> dict[str, Any]:
    """A client tool's earlier call as a chat tool call."""
    match = CLIENT_CALLS.match(item["type"])
    if match is None:
        raise ValueError(f"input item '{item['type']}' is not a client tool call")
    arguments = item.get("arguments")
    return {"id": item.get("call_id") or item.get("id"), "type": "function",
            "function": {"name": chat_name(match.group("kind")),
                         "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments or {})}}


def client_output(item: Mapping[str, Any]) -> dict[str, Any]:
    """A client tool's result (e.g. the tools a search found) as a chat tool message."""
    if CLIENT_OUTPUTS.match(item["type"]) is None:
        raise ValueError(f"input item '{item['type']}' is not a client tool output")
    result = {k: v for k, v in item.items() if k not in ("type", "id", "call_id", "status", "execution")}
    return {"role": "tool", "tool_call_id": item.get("call_id"), "content": json.dumps(result)}


# -- answers: a chat call back into the caller's item ---------------------------------------------

def client_call_item(route: Route, call_id: str, arguments: str, item_id: str) -> dict[str, Any]:
    """The `<type>_call` item a client-executed tool's call is (arguments as an object)."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        parsed = {"arguments": arguments}
    item = {"id": item_id, "type": f"{route.name}_call", "status": "completed", "call_id": call_id,
            "execution": "client", "arguments": parsed if isinstance(parsed, dict) else {"value": parsed}}
    if route.namespace:
        item["namespace"] = route.namespace
    return item
