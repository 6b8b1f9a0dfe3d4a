"""Relay an upstream stream to the caller as OpenAI SSE, keeping the books as it goes.

Each payload is peeked at (never re-serialised) for usage and for what was delivered, so that a
stream cut mid-way is still settled with what the caller actually received. A failure after the
first byte cannot be hidden any more: the stream ends with an explicit `error` event and
`[DONE]`, which the official SDKs raise as an `APIError`, never a silent cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import msgspec

from gateway.errors import error_body
from providers.base import ProviderError, Timeout, Usage
from providers.openai_wire import UsagePeek, to_usage

DONE = b"data: [DONE]\n\n"


class _DeltaPeek(msgspec.Struct):
    content: str | None = None
    tool_calls: list[msgspec.Raw] | None = None


class _ChoicePeek(msgspec.Struct):
    delta: _DeltaPeek | None = None
    finish_reason: str | None = None


class _ChunkPeek(msgspec.Struct):
    choices: list[_ChoicePeek] = []
    usage: UsagePeek | None = None


_chunk_decoder = msgspec.json.Decoder(_ChunkPeek)


@dataclass(slots=True)
class StreamOutcome:
    """What happened, for settlement: upstream usage when reported, else what was delivered."""

    usage: Usage
    reported: bool
    delivered_chunks: int
    completed: bool
    error: ProviderError | None
    first_byte_s: float | None


SettleCallback = Callable[[StreamOutcome], Awaitable[None]]


async def close_quietly(stream: AsyncIterator[bytes]) -> None:
    """Close an upstream stream (cancelling its HTTP call); a failure to close changes nothing."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            pass


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def relay(
    first: bytes,
    rest: AsyncIterator[bytes],
    *,
    include_usage: bool,
    prompt_tokens_estimate: int,
    deadline: float,
    target: str,
    started: float,
    on_done: SettleCallback,
) -> AsyncIterator[bytes]:
    """Yield SSE frames for `first` then `rest`; call `on_done` exactly once, on every exit path."""
    usage: Usage | None = None
    delivered = 0
    completed = False
    error: ProviderError | None = None
    first_byte_s: float | None = None

    def frame(payload: bytes) -> bytes | None:
        nonlocal usage, delivered
        try:
            peek = _chunk_decoder.decode(payload)
        except msgspec.DecodeError:
            return sse(payload)
        if peek.usage is not None:
            usage = to_usage(peek.usage)
            if not peek.choices and not include_usage:
                return None  # the usage-only chunk the caller did not ask for
        for choice in peek.choices:
            if choice.delta is not None and (choice.delta.content or choice.delta.tool_calls):
                delivered += 1
        return sse(payload)

    try:
        out = frame(first)
        if out is not None:
            first_byte_s = time.perf_counter() - started
            yield out
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError
            try:
                async with asyncio.timeout(remaining):
                    payload = await anext(rest)
            except StopAsyncIteration:
                break
            out = frame(payload)
            if out is not None:
                if first_byte_s is None:
                    first_byte_s = time.perf_counter() - started
                yield out
        completed = True
        yield DONE
    except ProviderError as exc:
        error = exc
        yield _error_frame(exc.message, exc.error_type, exc.code, target)
        yield DONE
    except asyncio.TimeoutError:
        error = Timeout("the stream exceeded its total time limit", target=target)
        yield _error_frame(error.message, error.error_type, error.code, target)
        yield DONE
    finally:
        await close_quietly(rest)
        reported = usage is not None
        final = usage or Usage(prompt_tokens=prompt_tokens_estimate, completion_tokens=delivered)
        await asyncio.shield(
            on_done(StreamOutcome(final, reported, delivered, completed, error, first_byte_s))
        )


def _error_frame(message: str, type_: str, code: str | None, target: str) -> bytes:
    return sse(error_body(f"The upstream stream from '{target}' failed: {message}", type=type_, code=code))
