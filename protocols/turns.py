"""What a conversation asks, per protocol: the latest user turn, and the facts around it.

Agents (Claude Code, Codex) send a long system prompt, dozens of tool schemas and the whole
history on every request of a tool loop; a chat resends every earlier turn. The router scores
what the user asked and decides once per conversation, so it needs three things no single field
gives in every protocol:

* `ask`: the text of the latest turn the user wrote: not the system prompt or developer
  instructions, not a tool result, not context a client injects as a whole text block
  (Claude Code's `<system-reminder>…</system-reminder>`, Codex's `<environment_context>…`);
* the conversation's shape: user turns so far, tool results, whether this request continues a
  tool loop (its newest input is a tool result);
* `opening`: a digest of what stays the same on every request of one conversation (the system
  prompt and everything up to and including the first thing the user asked), plus the ids a
  protocol offers for it (Responses `prompt_cache_key`, Messages `metadata.user_id`).

Each reader walks the body once and never raises on odd input (routing is best effort; the
protocol's own validation answers bad requests).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from protocols.api import Api

# A text block that is one whole element of a custom tag (a `-` or `_` in its name, which HTML
# tags never have) is context a client injected, not words the user typed: Claude Code's
# `<system-reminder>…</system-reminder>`, `<command-name>…`, Codex's `<environment_context>…`,
# `<user_instructions>…`. A user pasting a `<div>…</div>` still counts as asking.
_INJECTED = re.compile(r"^\s*<([A-Za-z][\w]*[-_][\w.-]{0,60})(?:\s[^>]*)?>.*</\1>\s*$", re.DOTALL)
# Codex sends a repository's AGENTS.md as a user message with this heading.
_INJECTED_PREFIXES = ("# AGENTS.md instructions for",)
_TOOL_OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output", "computer_call_output",
                           "local_shell_call_output", "shell_call_output", "apply_patch_call_output",
                           "mcp_call_output", "tool_search_output"})


@dataclass(frozen=True, slots=True)
class Turns:
    ask: str = ""  # the latest user-written text ("" when the user wrote none)
    user_turns: int = 0  # user messages with words of their own
    assistant_turns: int = 0
    tool_results: int = 0  # tool results anywhere in the conversation
    tool_loop: bool = False  # the newest input is a tool result: this continues the model's own work
    tools: int = 0  # tools declared
    opening: str = ""  # digest of the conversation's fixed start ("" when nothing was asked yet)
    thread_id: str = ""  # an id the protocol offers for the conversation (Responses prompt_cache_key)
    user_id: str = ""  # Messages `metadata.user_id` (Claude Code's includes its session)


def injected(text: str) -> bool:
    """Whether a text block is client-injected context rather than the user's words."""
    return bool(_INJECTED.match(text)) or text.lstrip().startswith(_INJECTED_PREFIXES)


def _own_text(texts: Iterable[str]) -> str:
    return "\n".join(t for t in texts if t.strip() and not injected(t))


def _parts_text(content: Any, kinds: frozenset[str]) -> list[str]:
    """Text of a content that is a string or a list of parts of the given types."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [p["text"] for p in content
            if isinstance(p, Mapping) and p.get("type") in kinds and isinstance(p.get("text"), str)]


class _Walk:
    """Accumulates one conversation's facts while a reader walks its messages in order."""

    def __init__(self) -> None:
        self.ask = ""
        self.user_turns = self.assistant_turns = self.tool_results = 0
        self.tool_loop = False
        self.digest = hashlib.blake2b(digest_size=16)
        self.opened = False
        self.last_raw = ""  # the last user message's whole text: the ask when nothing else is

    def fixed(self, text: str) -> None:
        """Text before the first ask (system prompt, instructions, injected context): the opening."""
        if not self.opened and text:
            self.digest.update(text.encode("utf-8", "replace") + b"\x00")

    def user(self, texts: list[str], tool_results: int) -> None:
        own = _own_text(texts)
        if any(t.strip() for t in texts):
            self.last_raw = "\n".join(texts)
        self.tool_results += tool_results
        self.tool_loop = tool_results > 0 and not own
        if own:
            self.user_turns += 1
            self.ask = own
            self.fixed(own)
            self.opened = True
        else:
            for text in texts:
                self.fixed(text)

    def assistant(self) -> None:
        self.assistant_turns += 1
        self.tool_loop = False

    def tool(self) -> None:
        self.tool_results += 1
        self.tool_loop = True

    def turns(self, tools: Any, thread_id: str = "", user_id: str = "") -> Turns:
        return Turns(ask=self.ask or self.last_raw, user_turns=self.user_turns, assistant_turns=self.assistant_turns,
                     tool_results=self.tool_results, tool_loop=self.tool_loop,
                     tools=len(tools) if isinstance(tools, list) else 0,
                     opening=self.digest.hexdigest() if self.opened else "", thread_id=thread_id, user_id=user_id)


_CHAT_TEXT = frozenset({"text", "input_text"})


def chat_turns(body: Mapping[str, Any]) -> Turns:
    """OpenAI Chat Completions (and any chat-shaped view): `tool` / `function` messages are results."""
    walk = _Walk()
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if role == "user":
            walk.user(_parts_text(message.get("content"), _CHAT_TEXT), 0)
        elif role == "assistant":
            walk.assistant()
        elif role in ("tool", "function"):
            walk.tool()
        else:  # system, developer
            walk.fixed("\n".join(_parts_text(message.get("content"), _CHAT_TEXT)))
    return walk.turns(body.get("tools"))


def messages_turns(body: Mapping[str, Any]) -> Turns:
    """Anthropic Messages: tool results are `tool_result` blocks inside user messages."""
    walk = _Walk()
    system = body.get("system")
    walk.fixed("\n".join(_parts_text(system, frozenset({"text"}))))
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        role, content = message.get("role"), message.get("content")
        if role == "user":
            results = sum(1 for b in content if isinstance(b, Mapping) and b.get("type") == "tool_result") \
                if isinstance(content, list) else 0
            walk.user(_parts_text(content, frozenset({"text"})), results)
        elif role == "assistant":
            walk.assistant()
        else:  # a system message inside `messages`
            walk.fixed("\n".join(_parts_text(content, frozenset({"text"}))))
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    return walk.turns(body.get("tools"), user_id=user_id if isinstance(user_id, str) else "")


_RESPONSES_TEXT = frozenset({"input_text", "text", "output_text"})


def responses_turns(body: Mapping[str, Any]) -> Turns:
    """OpenAI Responses: items; `*_call_output` items are tool results. (A `previous_response_id`
    is resolved into the whole input before routing, so the walk sees the whole conversation.)"""
    walk = _Walk()
    if isinstance(body.get("instructions"), str):
        walk.fixed(body["instructions"])
    items = body.get("input")
    if isinstance(items, str):
        walk.user([items], 0)
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            texts = _parts_text(item.get("content"), _RESPONSES_TEXT)
            if role == "user":
                walk.user(texts, 0)
            elif role == "assistant":
                walk.assistant()
            else:  # system, developer
                walk.fixed("\n".join(texts))
        elif isinstance(kind, str) and kind in _TOOL_OUTPUTS:
            walk.tool()
        elif kind in ("function_call", "custom_tool_call"):
            walk.tool_loop = False
    key = body.get("prompt_cache_key")
    return walk.turns(body.get("tools"), thread_id=key if isinstance(key, str) else "")


def turns_of(api: Api, body: Mapping[str, Any]) -> Turns:
    """The facts for any endpoint's body (completions and embeddings: one ask, no conversation)."""
    if api == Api.MESSAGES:
        return messages_turns(body)
    if api == Api.RESPONSES:
        return responses_turns(body)
    if api == Api.CHAT:
        return chat_turns(body)
    prompt = body.get("prompt", body.get("input"))
    text = prompt if isinstance(prompt, str) else ""
    return Turns(ask=text, user_turns=1 if text else 0)
