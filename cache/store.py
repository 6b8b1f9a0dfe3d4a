"""A small key/value store with TTLs: the one contract behind every piece of shared state.

Two implementations:

* `MemoryStore` — in-process LRU with per-entry TTL, bounded by entry count and bytes (the
  embedded default: one gateway process).
* `RedisStore` — shared by every gateway replica. Values are zlib-compressed (one header byte
  says whether a value is compressed, so stores with and without compression read each other's
  values), TTLs are set with `SET ... PX`.

The cache is best-effort: a Redis outage, restart or timeout never raises to the caller.
`get` answers None (a miss), `set`/`delete` are dropped, `ping` answers False, and the store
counts the failure (`errors`, `last_error`, `available`). After a failure the store stops
talking to Redis for `backoff` seconds, so an outage does not add a connect timeout to every
request; the first call after the pause probes again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from dataclasses import dataclass
from collections import OrderedDict
from typing import Protocol, runtime_checkable

from state import Failure, Gate, QuietLog, StoreBusy, StoreHealth, classify
from state.health import UntrackedHealth

log = logging.getLogger(__name__)

__all__ = ["Store", "MemoryStore", "RedisStore"]


@runtime_checkable
class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def fetch(self, key: str) -> Fetched:
        """Like `get`, but says whether the store answered at all (a miss vs. an outage)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Fetched:
    answered: bool  # False: the store could not be asked (down, busy); `value` says nothing then
    value: bytes | None = None


class MemoryStore:
    """LRU + TTL, in process. `max_bytes` counts keys (UTF-8) plus values.

    A value larger than `max_bytes` on its own is not stored (and any older value of its key is
    dropped, so a reader never sees stale data after a write). Expired entries are removed when
    touched, and before any live entry is evicted for room.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024, *, clock=time.monotonic) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key.encode()) + len(value)

    def _drop(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self._bytes -= self._size(key, item[0])

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires <= self._clock():
            self._drop(key)
            self.expirations += 1
            return None
        self._data.move_to_end(key)
        return value

    async def fetch(self, key: str) -> Fetched:
        return Fetched(True, await self.get(key))

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._drop(key)
        size = self._size(key, value)
        if not (ttl > 0) or size > self.max_bytes:
            return
        now = self._clock()
        self._data[key] = (bytes(value), now + ttl)
        self._bytes += size
        if len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            self._purge_expired(now)
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._data))
            self._drop(oldest)
            self.evictions += 1

    def _purge_expired(self, now: float) -> None:
        for k in [k for k, (_, exp) in self._data.items() if exp <= now]:
            self._drop(k)
            self.expirations += 1

    async def delete(self, key: str) -> None:
        self._drop(key)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._data.clear()
        self._bytes = 0


_RAW = b"\x00"
_ZLIB = b"\x01"


class RedisStore:
    """Redis-backed store; never raises on Redis failures (see module docstring).

    `timeout` bounds every operation (seconds, None: only the client's own socket timeouts);
    `backoff` is how long to skip Redis after a failure. `owns_client`: whether `aclose` closes
    the Redis client (leave False when the client is shared with other stores). `health` is the
    state layer's shared outage detector (`state.StoreHealth`): while it says the store
    is down every call is a miss at once, and a failure here tells it (one probe, not one
    timeout per request). Failures are logged at most once per 30 s per operation.
    """

    def __init__(
        self,
        redis,
        prefix: str = "gw:cache:",
        compress: bool = True,
        *,
        compress_min_bytes: int = 256,
        compress_level: int = 3,
        timeout: float | None = 0.5,
        backoff: float = 1.0,
        owns_client: bool = False,
        health: StoreHealth | UntrackedHealth | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.redis = redis
        self.health = health or UntrackedHealth()
        self.gate = gate or Gate(size=1 << 30)
        self.prefix = prefix
        self.compress = compress
        self.compress_min_bytes = compress_min_bytes
        self.compress_level = compress_level
        self.timeout = timeout
        self.backoff = backoff
        self.owns_client = owns_client
        self.errors = 0  # failed operations (connection, timeout, protocol, corrupt value)
        self.skipped = 0  # operations not attempted because of the backoff after a failure
        self.last_error: str | None = None
        self._down_until = 0.0
        self._quiet = QuietLog(log)
        self._tasks: set[asyncio.Task] = set()

    @property
    def available(self) -> bool:
        """False while the store is backing off after a failure or known to be down."""
        return time.monotonic() >= self._down_until and not self.health.down

    def _key(self, key: str) -> str:
        return self.prefix + key

    def encode(self, value: bytes) -> bytes:
        if self.compress and len(value) >= self.compress_min_bytes:
            packed = zlib.compress(value, self.compress_level)
            if len(packed) < len(value):
                return _ZLIB + packed
        return _RAW + value

    @staticmethod
    def decode(stored: bytes) -> bytes:
        head, body = stored[:1], stored[1:]
        if head == _RAW:
            return body
        if head == _ZLIB:
            return zlib.decompress(body)
        raise ValueError("unknown value header")

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{op}: {type(exc).__name__}: {exc}"
        self._down_until = time.monotonic() + self.backoff
        self._quiet.warning(op, "redis store %s failed (cache bypassed for %.1fs): %s", op, self.backoff, self.last_error)
        kind = classify(exc)
        if kind is Failure.DOWN:
            self.health.mark_down(exc)
        elif kind is Failure.TIMEOUT and not self.health.down:
            self._spawn(self.health.confirm(exc))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, op: str, coro):
        """Run one Redis command; (ok, result). Never raises anything but cancellation."""
        if not self.available:
            coro.close()
            self.skipped += 1
            return False, None
        try:
            async with self.gate.slot():  # the shared back-pressure gate: busy = a miss, not an outage
                if self.timeout is None:
                    result = await coro
                else:
                    result = await asyncio.wait_for(coro, self.timeout)
        except asyncio.CancelledError:
            coro.close()
            raise
        except StoreBusy:  # our own back-pressure: this call is a miss, the store is fine
            coro.close()
            self.skipped += 1
            return False, None
        except Exception as exc:  # RedisError, OSError, TimeoutError, protocol surprises
            self._failed(op, exc)
            return False, None
        self._down_until = 0.0
        return True, result

    async def get(self, key: str) -> bytes | None:
        return (await self.fetch(key)).value

    async def fetch(self, key: str) -> Fetched:
        ok, stored = await self._call("get", self.redis.get(self._key(key)))
        if not ok:
            return Fetched(False)
        return Fetched(True, self._value(stored))

    def _value(self, stored) -> bytes | None:
        if stored is None:
            return None
        if isinstance(stored, str):  # client created with decode_responses=True: unusable here
            self._failed("get", TypeError("redis client must not decode responses"))
            return None
        try:
            return self.decode(stored)
        except Exception as exc:  # corrupt or foreign value: a miss, never an error
            self.errors += 1
            self.last_error = f"decode: {type(exc).__name__}: {exc}"
            return None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if not (ttl > 0) or math.isinf(ttl):
            return
        px = max(1, int(ttl * 1000))
        await self._call("set", self.redis.set(self._key(key), self.encode(value), px=px))

    async def delete(self, key: str) -> None:
        await self._call("delete", self.redis.delete(self._key(key)))

    async def ping(self) -> bool:
        # A health check always probes, even while backing off.
        self._down_until = 0.0
        if self.health.down:
            return await self.health.probe()
        ok, result = await self._call("ping", self.redis.ping())
        return bool(ok and result)

    async def aclose(self) -> None:
        if self.owns_client:
            try:
                await self.redis.aclose()
            except Exception as exc:  # closing a dead connection must not raise either
                self.last_error = f"aclose: {type(exc).__name__}: {exc}"
