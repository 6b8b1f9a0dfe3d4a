"""Relay an upstream stream to the caller in the caller's protocol, keeping the books as it goes.

Each payload is peeked at by the protocol's wire (never re-serialised) for usage and for what was
delivered, so that a stream cut mid-way is still settled with what the caller actually received.
A failure after the first byte cannot be hidden any more: the stream ends with the protocol's
explicit error event (which the official SDKs raise), never a silent cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from protocols.usage import merge
from protocols.wire import Wire
from providers.base import ProviderError, Timeout, Unavailable, Usage


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


async def relay(
    wire: Wire,
    head: list[bytes],
    rest: AsyncIterator[bytes],
    *,
    include_usage: bool,
    prompt_tokens_estimate: int,
    deadline: float,
    target: str,
    started: float,
    on_done: SettleCallback,
) -> AsyncIterator[bytes]:
    """Yield framed events for `head` then `rest`; call `on_done` exactly once, on every exit path."""
    usage: Usage | None = None
    delivered = 0
    completed = False
    error: ProviderError | None = None
    first_byte_s: float | None = None
    final = False

    def frame(payload: bytes) -> bytes | None:
        nonlocal usage, delivered, final
        peek = wire.peek(payload)
        if not peek.valid:
            raise Unavailable("the upstream stream sent a payload that is not valid JSON for its protocol", target=target)
        if peek.usage is not None:
            usage = merge(usage, peek.usage)
        delivered += peek.delivered
        final = final or peek.final
        if peek.usage_only and not include_usage:
            return None  # the usage-only chunk the caller did not ask for
        return wire.frame(payload)

    try:
        for payload in head:
            out = frame(payload)
            if out is not None:
                if first_byte_s is None:
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
                if wire.requires_final and not final:
                    raise Unavailable("the upstream stream ended before its final event", target=target) from None
                break
            out = frame(payload)
            if out is not None:
                if first_byte_s is None:
                    first_byte_s = time.perf_counter() - started
                yield out
        completed = True
        if wire.done:
            yield wire.done
    except ProviderError as exc:
        error = exc
        yield _error_frame(wire, exc, target)
    except asyncio.TimeoutError:
        error = Timeout("the stream exceeded its total time limit", target=target)
        yield _error_frame(wire, error, target)
    finally:
        await close_quietly(rest)
        reported = usage is not None
        final = usage or Usage(prompt_tokens=prompt_tokens_estimate, completion_tokens=delivered)
        await asyncio.shield(
            on_done(StreamOutcome(final, reported, delivered, completed, error, first_byte_s))
        )


def _error_frame(wire: Wire, exc: ProviderError, target: str) -> bytes:
    message = f"The upstream stream from '{target}' failed: {exc.message}"
    return wire.error_frame(message, exc.error_type, exc.code) + wire.done
