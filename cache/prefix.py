"""Fingerprints of a request's static prompt prefix.

The static prefix is what repeats across the turns of a conversation and across requests that
share a system prompt: the tools, and every message before the last user turn (system/developer
prompts, earlier turns). Its fingerprint drives replica affinity for self-hosted engines (same
prefix → same replica → KV prefix-cache hits) and provider-side prompt caching hints (Anthropic
`cache_control` breakpoints, OpenAI `prompt_cache_key`).

`prefix_fingerprint` is tenant-independent (it is a property of the prompt); anything sent to a
provider goes through `prompt_cache_key`, which is tenant-scoped, so tenants never share a
provider-side cache either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .response import canonical_json

__all__ = ["prefix_fingerprint", "prompt_cache_key", "static_prefix"]


def static_prefix(body: Mapping[str, Any]) -> list[Any]:
    """The messages before the last user turn (all but the last message when there is no user turn)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return []
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, Mapping) and m.get("role") == "user":
            return messages[:i]
    return messages[:-1]


def _chars(obj: Any) -> int:
    """Characters of the text a prompt is made of (strings inside the structure, not JSON syntax)."""
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, Mapping):
        return sum(_chars(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_chars(v) for v in obj)
    return 0


def prefix_fingerprint(body: Mapping[str, Any]) -> tuple[str | None, int]:
    """(sha256 hex of the static prefix or None when there is none, approx. tokens: chars/4)."""
    messages = static_prefix(body)
    tools = body.get("tools") or []
    if not messages and not tools:
        return None, 0
    try:
        material = canonical_json({"v": 1, "tools": tools, "messages": messages})
    except (TypeError, ValueError):
        return None, 0
    approx_tokens = (_chars(messages) + len(canonical_json(tools)) if tools else _chars(messages)) // 4
    return hashlib.sha256(material).hexdigest(), approx_tokens


def prompt_cache_key(tenant: str, fingerprint: str) -> str:
    """Provider-side cache key for one tenant's prefix; the tenant name is hashed, never sent."""
    digest = hashlib.sha256(f"{tenant}\x00{fingerprint}".encode()).hexdigest()
    return f"gw-{digest[:40]}"
