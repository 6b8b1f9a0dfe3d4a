"""Circuit breakers per target (or `target@endpoint`), shared by every gateway replica.

Why shared: with N replicas each keeping its own breaker, a dead target keeps receiving N times
the traffic needed to trip it, and replicas disagree about whether it is back. The state lives in
a store (memory for one process; Redis, one Lua script per operation, for many), so one replica's
evidence protects them all and half-open probes are counted globally.

State machine per key:

* closed: outcomes land in a sliding window of one-second buckets (`window_seconds` of them).
  When at least `min_calls` were seen and `failures >= failure_rate * calls`, it opens. Calls
  slower than `slow_call_seconds` count as failures (a target that answers in 40 s is not healthy).
* open: every `allow` is refused until `opened_until`. The cool-down is
  `base_cooldown * 2**(trips - 1)`, capped at `max_cooldown`: a target that keeps failing is
  tried less and less often.
* half-open (after the cool-down): up to `half_open_probes` calls are admitted. A successful
  probe closes the breaker (fresh window); a failed one re-opens it with the next, longer
  cool-down. If admitted probes never report (a cancelled request), new probes are admitted
  once `probe_timeout` has passed since the last one was granted, so the key cannot wedge.
* trips decay: the trip count is forgotten when the breaker next trips after having stayed
  closed for `trip_memory` seconds, so a target that failed last week starts at the base cool-down.

Time comes from the caller (`now`), as in `budgets.py`, so tests can drive a fake clock; replicas
are assumed to have roughly synchronised clocks (NTP), which the cool-downs tolerate easily.

Hot path: `allow` runs on every request. A closed state is cached locally for `cache_ttl`
(250 ms), so the common case costs a dict lookup; open-before-its-deadline is also answered
locally (the state machine cannot leave `open` before `opened_until`), every other case asks the
store. `record` is one store round trip, run in the background by `BreakerGate.observe`.
If the store fails, breakers fail open (allow everything) and log: a Redis outage must not take
every target down with it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gateway.state import Failure, Gate, QuietLog, StoreHealth, classify, register

log = logging.getLogger("gateway.breaker")
_quiet = QuietLog(log)  # a store outage must not log once per request

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

__all__ = [
    "BreakerConfig",
    "BreakerGate",
    "BreakerState",
    "BreakerStore",
    "Breakers",
    "CLOSED",
    "HALF_OPEN",
    "MemoryBreakerStore",
    "OPEN",
    "RedisBreakerStore",
    "endpoint_key",
]


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


def endpoint_key(target: str, endpoint: str) -> str:
    """Key of one replica endpoint of a target (its own breaker, beside the target's)."""
    return f"{target}@{endpoint}"


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

# One hash per key, one key per EVALSHA (Cluster safe): see gateway/state/lua/breaker.lua.


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


# ---------------------------------------------------------------------------------------------


def _why() -> str:
    exc = sys.exc_info()[1]
    return f"{type(exc).__name__}: {exc}"


@dataclass(slots=True)
class _Cached:
    state: str
    until: float
    at: float  # local time the store reported it
    version: int


class Breakers:
    """The executor-facing API: `allow` before a call, `record` after it."""

    def __init__(self, store: BreakerStore, config: BreakerConfig = BreakerConfig(), *, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.now = now
        self._cache: dict[str, _Cached] = {}

    def _remember(self, key: str, st: BreakerState, at: float) -> None:
        c = self._cache.get(key)
        # Out-of-order replies carry an older version: keep the newer state. A lower version after
        # the cache went stale means the key expired and restarted in the store: take it.
        if c is not None and st.version < c.version and at - c.at < self.config.cache_ttl:
            return
        self._cache[key] = _Cached(st.state, st.opened_until, at, st.version)

    async def allow(self, key: str) -> bool:
        now = self.now()
        c = self._cache.get(key)
        if c is not None and now - c.at < self.config.cache_ttl:
            if c.state == CLOSED:
                return True
        if c is not None and c.state == OPEN and now < c.until:
            return False  # nothing can close it before its deadline
        try:
            allowed, st = await self.store.allow(key, now, self.config)
        except Exception:
            _quiet.warning("allow", "breaker store unavailable (%s); allowing %s", _why(), key)
            return True
        self._remember(key, st, now)
        return allowed

    async def record(self, key: str, ok: bool, seconds: float) -> None:
        now = self.now()
        failure = (not ok) or seconds >= self.config.slow_call_seconds
        try:
            st = await self.store.record(key, failure, now, self.config)
        except Exception:
            _quiet.warning("record", "breaker store unavailable (%s); outcome for %s dropped", _why(), key)
            return
        self._remember(key, st, now)

    async def refresh(self, keys: Iterable[str], *, force: bool = False) -> dict[str, str]:
        """Sync cached states from the store (read-only), skipping fresh closed entries unless
        `force`. Returns the cached state of every key asked about."""
        keys = list(dict.fromkeys(keys))
        now = self.now()
        stale = [
            k for k in keys
            if force or (c := self._cache.get(k)) is None or c.state != CLOSED or now - c.at >= self.config.cache_ttl
        ]
        if stale:
            try:
                states = await self.store.states(stale, now, self.config)
            except Exception:
                _quiet.warning("refresh", "breaker store unavailable (%s); states not refreshed", _why())
            else:
                for k, st in zip(stale, states):
                    self._remember(k, st, now)
        return {k: self.cached_state(k) for k in keys}

    def cached_state(self, key: str) -> str:
        """The last state seen for `key` ("closed" if never seen); an open breaker past its
        deadline reads as half-open."""
        c = self._cache.get(key)
        if c is None:
            return CLOSED
        if c.state == OPEN and self.now() >= c.until:
            return HALF_OPEN
        return c.state

    def cache_age(self, key: str) -> float:
        c = self._cache.get(key)
        return math.inf if c is None else self.now() - c.at

    async def snapshot(self) -> dict[str, dict]:
        """Per key: state, failure_rate, calls, failures, opened_until, trips."""
        now = self.now()
        return {k: st.as_dict() for k, st in (await self.store.snapshot(now, self.config)).items()}


class BreakerGate:
    """Adapts `Breakers` to the executor's synchronous `gate` / `observe` hooks.

    `gate` cannot await a store, so it answers from the local cache: closed → try it; open →
    skip it; half-open → try it only with a probe permit claimed by `refresh` (the pipeline calls
    `await gate.refresh(keys)` before executing a plan). A permit claimed but not used expires in
    the store after `probe_timeout`. Stale entries are refreshed in the background, so even
    without the pipeline's `refresh` a breaker opened by another replica is seen within one
    request after `cache_ttl`.
    """

    def __init__(self, breakers: Breakers, *, key: Callable[[Any], str] | None = None) -> None:
        self.breakers = breakers
        self.key = key or (lambda candidate: candidate.name)
        self._permits: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._refreshing: set[str] = set()

    def _spawn(self, coro) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (sync caller): nothing can be scheduled
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def gate(self, candidate: Any) -> bool:
        key = self.key(candidate)
        b = self.breakers
        state = b.cached_state(key)
        if state == CLOSED:
            if b.cache_age(key) >= b.config.cache_ttl:
                self._background_refresh(key)
            return True
        if state == HALF_OPEN and self._permits.get(key, 0) > 0:
            self._permits[key] -= 1
            return True
        self._background_refresh(key)
        return False

    def observe(self, candidate: Any, error: BaseException | None, seconds: float) -> None:
        """Success, or an error that says nothing about the target's health (a bad request that it
        answered properly), counts as ok; errors with `trips_breaker` count as failures."""
        ok = error is None or not getattr(error, "trips_breaker", False)
        self._spawn(self.breakers.record(self.key(candidate), ok, seconds))

    async def refresh(self, keys: Iterable[str]) -> dict[str, str]:
        """Sync states from the store and claim probe permits for half-open keys."""
        states = await self.breakers.refresh(keys)
        for key, state in states.items():
            if state == HALF_OPEN and self._permits.get(key, 0) == 0:
                if await self.breakers.allow(key):
                    self._permits[key] = 1
        return {k: self.breakers.cached_state(k) for k in states}

    def _background_refresh(self, key: str) -> None:
        if key in self._refreshing:
            return
        self._refreshing.add(key)

        async def run() -> None:
            try:
                await self.refresh([key])
            finally:
                self._refreshing.discard(key)

        self._spawn(run())

    async def drain(self) -> None:
        """Wait for scheduled records/refreshes (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
