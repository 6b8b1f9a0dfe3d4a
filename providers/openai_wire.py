"""Small helpers for OpenAI's wire format shared by the OpenAI-compatible providers.

Bodies are passed through as bytes; only the few fields the gateway needs (usage, finish) are
decoded, with msgspec structs that skip everything else, so the hot path never builds objects
for content it does not look at.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from providers.base import ProviderError, Usage, error_from_status, parse_retry_after


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class UsagePeek(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class _BodyPeek(msgspec.Struct):
    usage: UsagePeek | None = None


class _ErrorDetail(msgspec.Struct):
    message: str | None = None


class _ErrorPeek(msgspec.Struct):
    error: _ErrorDetail | str | None = None
    message: str | None = None
    detail: str | None = None


_body_decoder = msgspec.json.Decoder(_BodyPeek)
_error_decoder = msgspec.json.Decoder(_ErrorPeek)


def to_usage(peek: UsagePeek | None) -> Usage | None:
    if peek is None:
        return None
    cached = peek.prompt_tokens_details.cached_tokens if peek.prompt_tokens_details else None
    return Usage(peek.prompt_tokens, peek.completion_tokens, cached or 0)


def usage_of(body: bytes) -> Usage:
    """Usage of a `chat.completion` body; zeros when the upstream did not report it."""
    try:
        return to_usage(_body_decoder.decode(body).usage) or Usage()
    except msgspec.DecodeError:
        return Usage()


def error_message(body: bytes, status: int) -> str:
    try:
        peek = _error_decoder.decode(body)
    except msgspec.DecodeError:
        text = body[:500].decode("utf-8", "replace").strip()
        return text or f"upstream answered HTTP {status}"
    if isinstance(peek.error, _ErrorDetail) and peek.error.message:
        return peek.error.message
    if isinstance(peek.error, str):
        return peek.error
    return peek.message or peek.detail or f"upstream answered HTTP {status}"


def status_error(status: int, body: bytes, headers, target: str) -> ProviderError:
    return error_from_status(
        status, error_message(body, status), target=target, retry_after=parse_retry_after(headers.get("retry-after"))
    )


async def sse_data(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Payloads of an SSE stream's `data:` fields, ending at `[DONE]`; a JSON `error` raises.

    Multi-line `data:` fields are joined with newlines, as the SSE specification says.
    """
    buffer: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if buffer:
                payload = b"\n".join(buffer)
                buffer.clear()
                if payload == b"[DONE]":
                    return
                yield payload
            continue
        if line.startswith(b"data:"):
            buffer.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
    if buffer:
        payload = b"\n".join(buffer)
        if payload != b"[DONE]":
            yield payload
