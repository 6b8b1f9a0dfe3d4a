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
from dataclasses import dataclass
from typing import Any

from gateway.breaker_store import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    BreakerState,
    BreakerStore,
    MemoryBreakerStore,
    RedisBreakerStore,
)
from state import QuietLog

log = logging.getLogger("gateway.breaker")
_quiet = QuietLog(log)  # a store outage must not log once per request

__all__ = [
    "BreakerConfig",
    "BreakerGate",
    "BreakerState",
    "BreakerStore",
    "Breakers",
    "CLOSED",
    "HALF_OPEN",
    "MemoryBreakerStore",
    "NoBreakers",
    "OPEN",
    "RedisBreakerStore",
    "endpoint_key",
]


def endpoint_key(target: str, endpoint: str) -> str:
    """Key of one replica endpoint of a target (its own breaker, beside the target's)."""
    return f"{target}@{endpoint}"


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


class NoBreakers:
    """No breakers configured: every target is always tried (the pipeline's default)."""

    async def refresh(self, keys: Iterable[str]) -> dict[str, str]:
        return {}


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
