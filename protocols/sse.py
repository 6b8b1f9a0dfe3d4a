"""Server-sent events: framing what we send, parsing what upstreams send."""

from __future__ import annotations

from collections.abc import AsyncIterator

DONE = b"data: [DONE]\n\n"


def sse(payload: bytes) -> bytes:
    """An unnamed event (OpenAI chat/completions streams)."""
    return b"data: " + payload + b"\n\n"


def named(event: str, payload: bytes) -> bytes:
    """A named event (Anthropic Messages and OpenAI Responses streams)."""
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


async def sse_data(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Payloads of an SSE stream's `data:` fields, ending at `[DONE]`.

    Multi-line `data:` fields are joined with newlines, as the SSE specification says. Event
    names are not returned: every protocol we relay repeats the event's name inside its JSON
    (`type`), so the payload alone is enough to re-frame it.
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
