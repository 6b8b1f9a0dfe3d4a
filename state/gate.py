"""Back-pressure in front of the Redis pool: at most `size` commands in flight per process.

Why: redis-py's default pool raises `Too many connections` the moment it is empty, and the
gateway used to read that as "Redis is down" (500s and a fail-open cascade under a burst).
Here an excess caller queues for up to `wait` seconds and then gets `StoreBusy`, which the HTTP
layer answers with 503 + Retry-After; the fail mode never flips on our own load. The pool itself
is sized a few connections larger than the gate, so probes and lease renewals always find one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from state.errors import StoreBusy


class Gate:
    def __init__(self, size: int = 64, wait: float = 2.0) -> None:
        if size < 1 or wait < 0:
            raise ValueError("gate size must be >= 1 and wait >= 0")
        self.size = size
        self.wait = wait
        self.refused = 0  # callers turned away after waiting `wait` seconds
        self._sem = asyncio.Semaphore(size)

    @property
    def in_flight(self) -> int:
        return self.size - self._sem._value

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.wait):
                await self._sem.acquire()
        except TimeoutError:
            self.refused += 1
            raise StoreBusy(f"{self.size} store commands in flight; waited {self.wait:.1f}s") from None
        try:
            yield
        finally:
            self._sem.release()
