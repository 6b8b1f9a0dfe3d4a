"""Text extraction from message content, and the one token estimator.

Every protocol's messages carry content as a string or a list of typed parts; only parts with a
`text` field carry words. Difficulty scoring, the semantic cache, admission, prefix fingerprints
and the engine's prompt building all read text through these functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_IMAGE = 768
_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})


def text_of(content: Any, *, strict: bool = False, sep: str = "\n") -> str | None:
    """The text of a message's content.

    Lenient (default): text parts joined with `sep`, other parts ignored, "" for anything else.
    Strict: None as soon as a part is not text (an image changes the question), or the content
    is neither a string nor a list.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            text = part.get("text") if isinstance(part, Mapping) else None
            if isinstance(text, str) and (not strict or part.get("type") in ("text", "input_text", "output_text")):
                texts.append(text)
            elif strict:
                return None
        return sep.join(texts)
    return None if strict else ""


def last_user_text(messages: Any, *, strict: bool = False) -> str | None:
    """Text of the last user message (None when there is none, or, strict, when it is not text)."""
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return text_of(message.get("content"), strict=strict)
    return None


def estimate_tokens(value: Any) -> int:
    """About four characters a token, over every string in a JSON value; images count a flat rate.

    An estimate sizes reservations and rejects the absurd; budgets settle on reported usage.
    """
    if value is None:
        return 0
    if isinstance(value, str):
        return (len(value) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
    if isinstance(value, Mapping):
        kind = value.get("type")
        # `type` is a part's tag only when it is a string: in a tool's JSON schema a property may be
        # named `type` (its value a schema object), and an object is no image.
        if isinstance(kind, str) and kind in _IMAGE_PARTS:
            return TOKENS_PER_IMAGE
        if isinstance(value.get("text"), str):  # a text part: its text, not its framing
            return estimate_tokens(value["text"])
        return sum(estimate_tokens(v) for v in value.values())
    if isinstance(value, list):
        return sum(estimate_tokens(v) for v in value)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return 1  # a token id
    return (len(str(value)) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def estimate_messages_tokens(messages: Sequence[Any], *extra: Any) -> int:
    """A chat-shaped prompt: per-message framing plus the content (and tools, system, ...)."""
    return 3 + sum(TOKENS_PER_MESSAGE + estimate_tokens(m) for m in messages) + sum(estimate_tokens(x) for x in extra)


def text_chars(value: Any) -> int:
    """Characters of the text a prompt is made of (strings inside the structure, not JSON syntax)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(text_chars(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(text_chars(v) for v in value)
    return 0


def static_prefix(messages: Any) -> list[Any]:
    """The messages before the last user turn (all but the last message when there is no user turn).

    What repeats across the turns of one conversation and across requests sharing a system prompt.
    """
    if not isinstance(messages, list) or not messages:
        return []
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, Mapping) and message.get("role") == "user":
            return messages[:i]
    return messages[:-1]


def split_text(text: str, target: int = 16, max_pieces: int = 64) -> list[str]:
    """A stored text as a few stream deltas at word boundaries (about `target` characters each;
    a replay need not be token by token). The space stays with the word before it, as
    tokenizers do."""
    if not text:
        return []
    size = max(target, -(-len(text) // max_pieces))
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end + 1)
            if space > start:
                end = space + 1
        pieces.append(text[start:end])
        start = end
    return pieces
