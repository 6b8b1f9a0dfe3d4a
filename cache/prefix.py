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

from protocols.text import static_prefix, text_chars

from .response import canonical_json

__all__ = ["prefix_fingerprint", "prompt_cache_key", "static_prefix"]


def prefix_fingerprint(body: Mapping[str, Any]) -> tuple[str | None, int]:
    """(sha256 hex of the static prefix or None when there is none, approx. tokens: chars/4)."""
    messages = static_prefix(body.get("messages"))
    tools = body.get("tools") or []
    if not messages and not tools:
        return None, 0
    try:
        material = canonical_json({"v": 1, "tools": tools, "messages": messages})
    except (TypeError, ValueError):
        return None, 0
    approx_tokens = (text_chars(messages) + len(canonical_json(tools)) if tools else text_chars(messages)) // 4
    return hashlib.sha256(material).hexdigest(), approx_tokens


def prompt_cache_key(tenant: str, fingerprint: str) -> str:
    """Provider-side cache key for one tenant's prefix; the tenant name is hashed, never sent."""
    digest = hashlib.sha256(f"{tenant}\x00{fingerprint}".encode()).hexdigest()
    return f"gw-{digest[:40]}"
