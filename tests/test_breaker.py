"""Circuit breakers: the same scenarios against the memory store and real Redis (Lua), with a fake
clock, plus two `Breakers` on one store standing in for two gateway replicas."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    BreakerGate,
    Breakers,
    MemoryBreakerStore,
    RedisBreakerStore,
    endpoint_key,
)
from providers.base import BadRequest, Unavailable

REDIS_URL = "redis://127.0.0.1:6379/0"
CFG = BreakerConfig(
    window_seconds=30, min_calls=10, failure_rate=0.5, slow_call_seconds=2.0,
    base_cooldown=5.0, max_cooldown=40.0, half_open_probes=2, probe_timeout=10.0, trip_memory=100.0,
)


class Clock:
    def __init__(self, t: float = 1_700_000_000.25) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Cand:
    name: str


class Env:
    """Makes breakers (each with its own store object, like separate replicas) over one backend."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.prefix = f"test:brk:{uuid.uuid4().hex[:10]}:"
        self.clock = Clock()
        self._memory = MemoryBreakerStore()
        self._clients: list[aioredis.Redis] = []

    def store(self):
        if self.kind == "memory":
            return self._memory
        client = aioredis.Redis.from_url(REDIS_URL)
        self._clients.append(client)
        return RedisBreakerStore(client, prefix=self.prefix)

    def breakers(self, config: BreakerConfig = CFG) -> Breakers:
        return Breakers(self.store(), config, now=self.clock)

    async def close(self) -> None:
        if self._clients:
            client = self._clients[0]
            keys = [k async for k in client.scan_iter(match=self.prefix + "*")]
            if keys:
                await client.delete(*keys)
        for c in self._clients:
            await c.aclose()


@pytest.fixture(params=["memory", "redis"])
async def env(request):
    e = Env(request.param)
    yield e
    await e.close()


async def fail(b: Breakers, key: str, n: int, seconds: float = 0.01) -> None:
    for _ in range(n):
        await b.record(key, False, seconds)


async def succeed(b: Breakers, key: str, n: int, seconds: float = 0.01) -> None:
    for _ in range(n):
        await b.record(key, True, seconds)


async def trip(b: Breakers, key: str) -> None:
    await fail(b, key, CFG.min_calls)
    assert b.cached_state(key) == OPEN


async def test_opens_at_failure_rate_threshold(env):
    b = env.breakers()
    await succeed(b, "t", 5)
    await fail(b, "t", 4)
    assert b.cached_state("t") == CLOSED and await b.allow("t")
    await fail(b, "t", 1)  # 10 calls, 5 failures: rate 0.5 >= 0.5
    assert b.cached_state("t") == OPEN
    assert not await b.allow("t")
    snap = (await b.snapshot())["t"]
    assert snap["state"] == OPEN and snap["trips"] == 1
    assert snap["opened_until"] == pytest.approx(env.clock.t + CFG.base_cooldown, abs=1e-3)


async def test_below_rate_or_below_min_calls_stays_closed(env):
    b = env.breakers()
    await fail(b, "few", CFG.min_calls - 1)  # 100% failures but too few calls
    assert b.cached_state("few") == CLOSED and await b.allow("few")
    await succeed(b, "rate", 6)
    await fail(b, "rate", 4)  # 10 calls, 40%
    assert b.cached_state("rate") == CLOSED
    snap = await b.snapshot()
    assert snap["few"]["calls"] == 9 and snap["few"]["failure_rate"] == 1.0
    assert snap["rate"]["calls"] == 10 and snap["rate"]["failure_rate"] == pytest.approx(0.4)


async def test_window_slides(env):
    b = env.breakers()
    await fail(b, "t", 9)
    env.clock.advance(CFG.window_seconds + 1)  # those 9 failures leave the window
    await fail(b, "t", 1)
    assert b.cached_state("t") == CLOSED
    assert (await b.snapshot())["t"]["calls"] == 1
    await fail(b, "t", 9)  # now 10 failures inside the window
    assert b.cached_state("t") == OPEN


async def test_slow_successes_count_as_failures(env):
    b = env.breakers()
    await succeed(b, "slow", 10, seconds=CFG.slow_call_seconds)
    assert b.cached_state("slow") == OPEN
    await succeed(b, "fast", 10, seconds=CFG.slow_call_seconds - 0.1)
    assert b.cached_state("fast") == CLOSED


async def test_cooldown_grows_on_repeated_trips_and_is_capped(env):
    b = env.breakers()
    await trip(b, "t")
    expected = [5.0, 10.0, 20.0, 40.0, 40.0]
    for i, cooldown in enumerate(expected):
        snap = (await b.snapshot())["t"]
        assert snap["trips"] == i + 1
        assert snap["opened_until"] - env.clock.t == pytest.approx(cooldown, abs=1e-3)
        env.clock.advance(cooldown - 0.5)
        assert not await b.allow("t"), "still cooling down"
        env.clock.advance(0.5)
        assert b.cached_state("t") == HALF_OPEN
        assert await b.allow("t"), "probe admitted after the cool-down"
        await b.record("t", False, 0.01)  # probe fails: re-open, longer
        assert b.cached_state("t") == OPEN


async def test_half_open_admits_only_n_probes(env):
    b = env.breakers()
    await trip(b, "t")
    env.clock.advance(CFG.base_cooldown)
    assert [await b.allow("t") for _ in range(4)] == [True, True, False, False]
    assert b.cached_state("t") == HALF_OPEN
    # The admitted probes never report: after probe_timeout new ones are admitted.
    env.clock.advance(CFG.probe_timeout)
    assert [await b.allow("t") for _ in range(3)] == [True, True, False]


async def test_probe_success_closes_and_trips_decay(env):
    b = env.breakers()
    await trip(b, "t")
    env.clock.advance(CFG.base_cooldown)
    assert await b.allow("t")
    await b.record("t", True, 0.01)
    assert b.cached_state("t") == CLOSED and await b.allow("t")
    snap = (await b.snapshot())["t"]
    assert snap["state"] == CLOSED and snap["calls"] == 0  # fresh window
    # Re-tripping soon after: the trip is remembered, the cool-down doubles.
    await trip(b, "t")
    assert (await b.snapshot())["t"]["opened_until"] - env.clock.t == pytest.approx(10.0, abs=1e-3)
    env.clock.advance(10.0)
    assert await b.allow("t")
    await b.record("t", True, 0.01)
    # Closed for longer than trip_memory: the next trip starts at the base cool-down again.
    env.clock.advance(CFG.trip_memory + 1)
    await trip(b, "t")
    snap = (await b.snapshot())["t"]
    assert snap["trips"] == 1
    assert snap["opened_until"] - env.clock.t == pytest.approx(CFG.base_cooldown, abs=1e-3)


async def test_probe_failure_reopens(env):
    b = env.breakers()
    await trip(b, "t")
    env.clock.advance(CFG.base_cooldown)
    assert await b.allow("t")
    await b.record("t", True, CFG.slow_call_seconds + 1)  # a slow probe is a failed probe
    assert b.cached_state("t") == OPEN
    assert not await b.allow("t")


async def test_results_while_open_are_ignored(env):
    b = env.breakers()
    await trip(b, "t")
    await succeed(b, "t", 20)  # late answers of calls admitted before it opened
    assert b.cached_state("t") == OPEN
    assert (await b.snapshot())["t"]["trips"] == 1


async def test_two_replicas_agree(env):
    a, b = env.breakers(), env.breakers()
    key = endpoint_key("selfhost", "http://10.0.0.1:8000/v1")
    assert await b.allow(key)  # replica b has cached "closed"
    await trip(a, key)
    # Within cache_ttl, b may still answer from its cache; after it, a refresh sees the truth.
    env.clock.advance(CFG.cache_ttl)
    assert await b.refresh([key]) == {key: OPEN}
    assert b.cached_state(key) == OPEN and not await b.allow(key)
    # Probes are counted across replicas: 2 in total, whoever asks.
    env.clock.advance(CFG.base_cooldown)
    assert await a.allow(key) and await b.allow(key)
    assert not await a.allow(key) and not await b.allow(key)
    await b.record(key, True, 0.01)  # b's probe succeeds: closed for both
    env.clock.advance(CFG.cache_ttl)
    assert await a.refresh([key]) == {key: CLOSED}
    assert await a.allow(key)
    assert set(await a.snapshot()) == set(await b.snapshot()) == {key}


async def test_refresh_forced_skips_cache(env):
    a, b = env.breakers(), env.breakers()
    assert await b.allow("t")
    await trip(a, "t")
    assert await b.refresh(["t"]) == {"t": CLOSED}  # fresh closed cache entry is trusted...
    assert await b.refresh(["t"], force=True) == {"t": OPEN}  # ...unless forced


async def test_snapshot_content(env):
    b = env.breakers()
    await succeed(b, "ok", 3)
    await fail(b, "ok", 1)
    await trip(b, "bad")
    snap = await b.snapshot()
    assert set(snap) == {"ok", "bad"}
    assert snap["ok"] == {
        "state": CLOSED, "failure_rate": 0.25, "calls": 4, "failures": 1, "opened_until": 0.0, "trips": 0,
    }
    assert snap["bad"]["state"] == OPEN and snap["bad"]["trips"] == 1
    assert snap["bad"]["opened_until"] > env.clock.t


async def test_gate_and_observe(env):
    b = env.breakers()
    gate = BreakerGate(b)
    cand = Cand("primary")
    assert gate.gate(cand)
    for _ in range(CFG.min_calls):
        gate.observe(cand, BadRequest("bad input"), 0.01)  # the target answered: not its fault
    await gate.drain()
    assert b.cached_state("primary") == CLOSED
    for _ in range(CFG.min_calls):
        gate.observe(cand, Unavailable("down"), 0.01)
    await gate.drain()
    assert b.cached_state("primary") == OPEN
    assert not gate.gate(cand)
    await gate.drain()
    # Half-open: gate only admits with a probe permit, claimed by refresh.
    env.clock.advance(CFG.base_cooldown)
    assert await gate.refresh(["primary"]) == {"primary": HALF_OPEN}
    assert gate.gate(cand)
    assert not gate.gate(cand), "one permit per refresh"
    await gate.drain()  # the failed gate scheduled a refresh that claims the second probe
    assert gate.gate(cand)
    gate.observe(cand, None, 0.01)
    await gate.drain()
    assert b.cached_state("primary") == CLOSED and gate.gate(cand)


async def test_gate_sees_other_replica_in_background(env):
    a, b = env.breakers(), env.breakers()
    gate = BreakerGate(b)
    cand = Cand("t")
    assert gate.gate(cand)
    await gate.drain()
    await trip(a, "t")
    env.clock.advance(CFG.cache_ttl)
    assert gate.gate(cand)  # stale cache: still allowed, but a background refresh is scheduled
    await gate.drain()
    assert not gate.gate(cand)


async def test_store_down_fails_open():
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    b = Breakers(RedisBreakerStore(client, prefix="test:brk:dead:"), CFG)
    try:
        assert await b.allow("t")
        await b.record("t", False, 0.01)  # logged and dropped, not raised
        assert await b.refresh(["t"]) == {"t": CLOSED}
    finally:
        await client.aclose()


async def test_redis_keys_expire_and_index():
    env = Env("redis")
    try:
        b = env.breakers()
        await fail(b, "x", 1)
        client = env._clients[0]
        ttl = await client.ttl(env.prefix + "k:x")
        assert 0 < ttl <= CFG.key_ttl_seconds()
        assert await client.smembers(env.prefix + "index") == {b"x"}
        await client.delete(env.prefix + "k:x")  # expired
        assert await b.snapshot() == {}
        assert await client.smembers(env.prefix + "index") == set()
    finally:
        await env.close()


async def test_concurrent_records_are_atomic(env):
    """Many concurrent outcomes from two replicas: exactly the expected calls are counted."""
    a, b = env.breakers(BreakerConfig(min_calls=1000)), env.breakers(BreakerConfig(min_calls=1000))
    await asyncio.gather(*[x.record("t", i % 3 != 0, 0.01) for i in range(60) for x in (a, b)])
    snap = (await a.snapshot())["t"]
    assert snap["calls"] == 120 and snap["failures"] == 40
