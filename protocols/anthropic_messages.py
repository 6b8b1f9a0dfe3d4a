"""Anthropic Messages (`POST /v1/messages`): usage and stream peeks for native upstream calls.

(The inbound side, callers speaking Messages to the gateway, builds on this module.)
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocols.anthropic_chat import message_usage
from protocols.usage import Usage


class _UsagePeek(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _MessagePeek(msgspec.Struct):
    usage: _UsagePeek | None = None


_message_decoder = msgspec.json.Decoder(_MessagePeek)


def usage_of(body: bytes) -> Usage:
    """Usage of a Messages response (cache reads and writes counted as prompt tokens)."""
    try:
        peek = _message_decoder.decode(body).usage
    except msgspec.DecodeError:
        return Usage()
    return message_usage(msgspec.structs.asdict(peek) if peek is not None else None)[0]


def is_error_event(event: dict[str, Any]) -> bool:
    return event.get("type") == "error"
