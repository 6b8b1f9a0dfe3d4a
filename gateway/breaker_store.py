"""Where breaker state lives: the state machine's data (`BreakerConfig`, `BreakerState`), the
store contract, and its two implementations: `MemoryBreakerStore` (one process; the reference the
Lua script mirrors) and `RedisBreakerStore` (every replica; one EVALSHA of
`state/lua/breaker.lua` per operation, Cluster safe). The state machine itself is
described in `gateway/breaker.py`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from state import Failure, Gate, StoreHealth, classify, register

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window_seconds: int = 30  # sliding window, one bucket per second
    min_calls: int = 10  # fewer calls in the window never open the breaker
    failure_rate: float = 0.5  # failures / calls at or above this opens it
    slow_call_seconds: float = 30.0  # a call at least this slow counts as a failure
    base_cooldown: float = 5.0  # first open period (seconds)
    max_cooldown: float = 120.0  # cap of base_cooldown * 2**(trips-1)
    half_open_probes: int = 1  # calls admitted while half-open
    probe_timeout: float = 30.0  # re-admit probes when the admitted ones never reported
    trip_memory: float = 600.0  # closed this long: the next trip starts at base_cooldown again
    cache_ttl: float = 0.25  # local cache of a closed state (seconds)

    def cooldown(self, trips: int) -> float:
        return min(self.max_cooldown, self.base_cooldown * 2 ** max(0, trips - 1))

    def key_ttl_seconds(self) -> int:
        """How long an idle key must survive in the store to keep its history meaningful."""
        return int(math.ceil(2 * (self.window_seconds + self.max_cooldown + self.trip_memory + self.probe_timeout)))


@dataclass(slots=True)
class BreakerState:
    """One key's state as the store reports it (state is the effective one: an open breaker past
    its deadline is reported as half-open, which is what the next `allow` will find)."""

    state: str = CLOSED
    opened_until: float = 0.0
    trips: int = 0
    calls: int = 0  # in the current window (closed state only)
    failures: int = 0
    # Bumped by every write in the store: replies that arrive out of order (concurrent calls on a
    # connection pool) must not overwrite a newer cached state with an older one.
    version: int = 0

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failure_rate": round(self.failure_rate, 4),
            "calls": self.calls,
            "failures": self.failures,
            "opened_until": self.opened_until,
            "trips": self.trips,
        }


@runtime_checkable
class BreakerStore(Protocol):
    async def allow(self, key: str, now: float, config: BreakerConfig) -> tuple[bool, BreakerState]:
        """Admit a call? Moves open → half-open after the cool-down and counts probes."""
        ...

    async def record(self, key: str, failure: bool, now: float, config: BreakerConfig) -> BreakerState:
        """Add one outcome and apply any transition it causes."""
        ...

    async def states(self, keys: list[str], now: float, config: BreakerConfig) -> list[BreakerState]:
        """Read-only: the current states of several keys in one round trip."""
        ...

    async def snapshot(self, now: float, config: BreakerConfig) -> dict[str, BreakerState]:
        """Every key the store knows about."""
        ...


# ---------------------------------------------------------------------------------------------
# Memory store: the reference implementation the Lua script mirrors


@dataclass(slots=True)
class _Entry:
    state: str = CLOSED
    until: float = 0.0
    trips: int = 0
    granted: int = 0  # probes admitted in the current half-open period
    granted_at: float = 0.0  # when the last probe was admitted
    closed_at: float = 0.0  # when a probe last closed it (trip decay)
    version: int = 0
    # ring of one-second buckets: slot -> [second, calls, failures]
    buckets: dict[int, list[int]] = field(default_factory=dict)

    def window(self, now: float, config: BreakerConfig) -> tuple[int, int]:
        sec = math.floor(now)
        calls = failures = 0
        for bsec, c, f in self.buckets.values():
            if sec - config.window_seconds < bsec <= sec:
                calls += c
                failures += f
        return calls, failures

    def trip(self, now: float, config: BreakerConfig, from_closed: bool) -> None:
        if from_closed and self.closed_at and now - self.closed_at >= config.trip_memory:
            self.trips = 0
        self.trips += 1
        self.state = OPEN
        self.until = now + config.cooldown(self.trips)
        self.granted = 0
        self.buckets.clear()

    def view(self, now: float, config: BreakerConfig) -> BreakerState:
        state = self.state
        if state == OPEN and now >= self.until:
            state = HALF_OPEN
        calls, failures = self.window(now, config) if state == CLOSED else (0, 0)
        return BreakerState(
            state, self.until if state != CLOSED else 0.0, self.trips, calls, failures, self.version
        )


class MemoryBreakerStore:
    """One process. Every method runs without awaiting, so each is atomic on the event loop."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def allow(self, key: str, now: float, config: BreakerConfig) -> tuple[bool, BreakerState]:
        e = self._entries.get(key)
        if e is None or e.state == CLOSED:
            return True, e.view(now, config) if e else BreakerState()
        if e.state == OPEN:
            if now < e.until:
                return False, e.view(now, config)
            e.state, e.granted, e.granted_at = HALF_OPEN, 0, now
        if e.granted >= config.half_open_probes and now - e.granted_at >= config.probe_timeout:
            e.granted = 0  # the admitted probes never reported: admit new ones
        e.version += 1
        if e.granted < config.half_open_probes:
            e.granted += 1
            e.granted_at = now
            return True, e.view(now, config)
        return False, e.view(now, config)

    async def record(self, key: str, failure: bool, now: float, config: BreakerConfig) -> BreakerState:
        e = self._entries.setdefault(key, _Entry())
        if e.state == OPEN:
            return e.view(now, config)  # late results of calls admitted before it opened: ignored
        e.version += 1
        if e.state == HALF_OPEN:
            if failure:
                e.trip(now, config, from_closed=False)
            else:
                e.state, e.until, e.granted, e.closed_at = CLOSED, 0.0, 0, now
                e.buckets.clear()
        else:
            sec = math.floor(now)
            slot = sec % config.window_seconds
            bucket = e.buckets.get(slot)
            if bucket is None or bucket[0] != sec:
                bucket = e.buckets[slot] = [sec, 0, 0]
            bucket[1] += 1
            bucket[2] += 1 if failure else 0
            calls, failures = e.window(now, config)
            if calls >= config.min_calls and failures >= config.failure_rate * calls:
                e.trip(now, config, from_closed=True)
        return e.view(now, config)

    async def states(self, keys: list[str], now: float, config: BreakerConfig) -> list[BreakerState]:
        out = []
        for key in keys:
            e = self._entries.get(key)
            out.append(e.view(now, config) if e else BreakerState())
        return out

    async def snapshot(self, now: float, config: BreakerConfig) -> dict[str, BreakerState]:
        return {key: e.view(now, config) for key, e in sorted(self._entries.items())}


# ---------------------------------------------------------------------------------------------
# Redis store

# One hash per key, one key per EVALSHA (Cluster safe): see state/lua/breaker.lua.


def _parse(reply: list[Any]) -> tuple[bool, BreakerState]:
    allowed, state, until, trips, calls, failures, version = reply
    if isinstance(state, bytes):
        state = state.decode()
    return bool(int(allowed)), BreakerState(
        state, float(until), int(trips), int(calls), int(failures), int(version)
    )


class RedisBreakerStore:
    """Breaker state in Redis: `<prefix>k:<key>` hashes (one per key, expiring when idle) and a
    `<prefix>index` set of known keys for `snapshot`. Each operation is ONE EVALSHA, never in a
    multi-key pipeline, so it works the same on a single node, Sentinel or Cluster.

    While the shared `health` says the store is down, calls fail at once (the breakers then fail
    open) instead of each waiting for a socket timeout.
    """

    def __init__(self, redis: Any, prefix: str = "gw:brk:", *, health: StoreHealth | None = None,
                 gate: Gate | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.health = health or StoreHealth(redis.ping)
        self.gate = gate or Gate()
        self._script = register(redis, "breaker")
        self._indexed: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.prefix}k:{key}"

    @property
    def index_key(self) -> str:
        return f"{self.prefix}index"

    def _args(self, op: str, now: float, config: BreakerConfig, failure: bool = False) -> list[Any]:
        return [
            op, repr(float(now)), config.window_seconds, config.min_calls, repr(float(config.failure_rate)),
            repr(float(config.base_cooldown)), repr(float(config.max_cooldown)), config.half_open_probes,
            repr(float(config.probe_timeout)), repr(float(config.trip_memory)), config.key_ttl_seconds(),
            "1" if failure else "0",
        ]

    async def _call(self, coro_fn: Callable[[], Any]) -> Any:
        if self.health.down:
            raise ConnectionError("breaker store unreachable (probing in the background)")
        try:
            async with self.gate.slot():
                return await coro_fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind = classify(exc)
            if kind is Failure.DOWN or (kind is Failure.TIMEOUT and not await self.health.confirm(exc)):
                self.health.mark_down(exc)
            raise

    async def _eval(self, op: str, key: str, now: float, config: BreakerConfig, failure: bool = False) -> Any:
        return await self._call(lambda: self._script(keys=[self._key(key)], args=self._args(op, now, config, failure)))

    async def _index(self, key: str) -> None:
        if key not in self._indexed:
            await self._call(lambda: self.redis.sadd(self.index_key, key))
            self._indexed.add(key)

    async def allow(self, key: str, now: float, config: BreakerConfig) -> tuple[bool, BreakerState]:
        return _parse(await self._eval("A", key, now, config))

    async def record(self, key: str, failure: bool, now: float, config: BreakerConfig) -> BreakerState:
        await self._index(key)
        return _parse(await self._eval("R", key, now, config, failure))[1]

    async def states(self, keys: list[str], now: float, config: BreakerConfig) -> list[BreakerState]:
        replies = await asyncio.gather(*(self._eval("S", key, now, config) for key in keys))
        return [_parse(r)[1] for r in replies]

    async def snapshot(self, now: float, config: BreakerConfig) -> dict[str, BreakerState]:
        raw = await self._call(lambda: self.redis.smembers(self.index_key))
        members = sorted(m.decode() if isinstance(m, bytes) else m for m in raw)
        if not members:
            return {}
        alive = await asyncio.gather(*(self._call(lambda k=k: self.redis.exists(self._key(k))) for k in members))
        gone = [k for k, a in zip(members, alive) if not a]
        if gone:  # expired idle keys: drop them from the index
            await self._call(lambda: self.redis.srem(self.index_key, *gone))
            self._indexed.difference_update(gone)
        live = [k for k, a in zip(members, alive) if a]
        return dict(zip(live, await self.states(live, now, config)))
