"""Budgets: exact under concurrency (in one loop and across OS processes), every window, window
boundaries, settle idempotency, reclaim, fail-open/closed, tenant isolation.

Runs against the real Redis on 127.0.0.1:6379 (a unique key prefix per test, deleted afterwards)
and against the in-memory store wherever the semantics are shared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import redis.exceptions as redis_errors

from gateway.budgets import (
    BudgetExceeded,
    Budgets,
    BudgetsBusy,
    BudgetsUnavailable,
    FailoverBudgets,
    MemoryBudgets,
    RedisBudgets,
    Reservation,
    openai_duration,
)
from state import Failure, Gate, StoreHealth, classify
from policies.schema import TenantLimits, TenantSpec
from tests.redis_servers import RedisServer

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/0"


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


# Fake clocks live in the future so that EXPIREATs computed from them are never in the past.
T0 = ts(2030, 6, 15, 12, 0, 15)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def spec(model_limits: dict[str, TenantLimits] | None = None, **limits) -> TenantSpec:
    return TenantSpec(limits=TenantLimits(**limits), model_limits=model_limits or {})


def rid() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def rclient():
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - environment problem, not a test result
        pytest.fail(f"Redis at {REDIS_URL} is required: {exc}")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(rclient):
    p = f"test:{uuid.uuid4().hex[:12]}:"
    yield p
    keys = [k async for k in rclient.scan_iter(match=p + "*", count=1000)]
    if keys:
        await rclient.delete(*keys)


class Backend:
    """A store plus raw access to its counters, so tests can look under the hood."""

    def __init__(self, kind: str, rclient, prefix: str) -> None:
        self.kind, self.rclient, self.prefix = kind, rclient, prefix

    def make(self, clock: Clock | None = None, reservation_ttl: float = 600.0) -> Budgets:
        clock = clock or Clock()
        if self.kind == "memory":
            self.store = MemoryBudgets(reservation_ttl=reservation_ttl, now=clock)
        else:
            self.store = RedisBudgets(
                aioredis.Redis.from_url(REDIS_URL), prefix=self.prefix, lease=reservation_ttl, now=clock
            )
        return self.store

    def key(self, tenant: str, suffix: str) -> str:
        return f"{self.prefix if self.kind == 'redis' else ''}{{{tenant}}}:{suffix}"

    async def raw(self, tenant: str, suffix: str) -> tuple[int, int] | None:
        key = self.key(tenant, suffix)
        if self.kind == "memory":
            c = self.store._counters.get(key)
            return None if c is None else (int(c[0]), int(c[1]))
        if not await self.rclient.exists(key):
            return None
        s, r = await self.rclient.hmget(key, "s", "r")
        return int(s or 0), int(r or 0)


@pytest.fixture(params=["memory", "redis"])
async def backend(request, rclient, prefix):
    b = Backend(request.param, rclient, prefix)
    yield b
    store = getattr(b, "store", None)
    if store is not None:
        await store.aclose()


async def reserve(
    store: Budgets, sp: TenantSpec, *, tenant: str = "acme", model: str = "m",
    tokens: int = 10, usd: float = 0.0, request_id: str | None = None,
) -> Reservation:
    return await store.reserve(
        tenant=tenant, spec=sp, model=model, request_id=request_id or rid(), tokens=tokens, usd=usd
    )


# ---------------------------------------------------------------------------------------------
# Exactness under concurrency


@pytest.mark.parametrize("window", ["tokens_per_day", "usd_per_month"])
async def test_concurrent_reserves_admit_exactly_the_budget(backend, window):
    n, est_tokens, est_usd = 10, 100, 0.25
    sp = spec(**({window: n * est_tokens} if window == "tokens_per_day" else {window: n * est_usd}))
    store = backend.make()

    results = await asyncio.gather(
        *(reserve(store, sp, tokens=est_tokens, usd=est_usd) for _ in range(10 * n)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    others = [r for r in results if not isinstance(r, (Reservation, BudgetExceeded))]
    assert len(admitted) == n and len(refused) == 9 * n, others
    assert {e.code for e in refused} == {"insufficient_quota"} and {e.window for e in refused} == {window}

    w = (await store.usage("acme", sp))["windows"][window]
    assert w["reserved"] == pytest.approx(n * (est_tokens if window == "tokens_per_day" else est_usd))
    assert w["spent"] == 0 and w["remaining"] == 0

    actual_tokens = [17 + 3 * i for i in range(n)]
    actual_usd = [0.0123 + 0.001 * i for i in range(n)]
    await asyncio.gather(
        *(store.settle(r, tokens=t, usd=u) for r, t, u in zip(admitted, actual_tokens, actual_usd, strict=True))
    )
    doc = await store.usage("acme", sp)
    assert doc["windows"]["tokens_per_day"]["spent"] == sum(actual_tokens)
    assert doc["windows"]["tokens_per_month"]["spent"] == sum(actual_tokens)
    assert doc["windows"]["usd_per_month"]["spent"] == pytest.approx(sum(actual_usd), abs=1e-9)
    for name in ("tokens_per_day", "tokens_per_month", "usd_per_month"):
        assert doc["windows"][name]["reserved"] == 0


CHILD = r"""
import asyncio, json, sys, uuid
import redis.asyncio as aioredis
from gateway.budgets import RedisBudgets, BudgetExceeded
from policies.schema import TenantLimits, TenantSpec

async def main(prefix, attempts, budget, est, worker):
    store = RedisBudgets(aioredis.Redis.from_url("redis://127.0.0.1:6379/0"), prefix=prefix)
    sp = TenantSpec(limits=TenantLimits(tokens_per_day=budget, concurrent_requests=10_000))
    await store.ping()
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    async def one(i):
        try:
            return await store.reserve(tenant="acme", spec=sp, model="m", request_id=f"{worker}-{i}", tokens=est, usd=0.0)
        except BudgetExceeded:
            return None
    got = [r for r in await asyncio.gather(*(one(i) for i in range(attempts))) if r is not None]
    print(json.dumps({"admitted": len(got)}), flush=True)
    sys.stdin.readline()  # settle only once the parent has counted every admission
    actual = [7 + (hash(r.request_id) % 50) for r in got]
    await asyncio.gather(*(store.settle(r, tokens=a, usd=0.0) for r, a in zip(got, actual)))
    print(json.dumps({"actual": sum(actual)}), flush=True)
    await store.aclose()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
"""


async def test_two_processes_share_one_exact_budget(prefix):
    n, est = 12, 50
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, prefix, str(5 * n), str(n * est), str(est), f"w{w}",
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        for w in range(2)
    ]

    async def line(p) -> str:
        return (await asyncio.wait_for(p.stdout.readline(), 20)).decode().strip()

    async def send(p) -> None:
        p.stdin.write(b"go\n")
        await p.stdin.drain()

    try:
        assert [await line(p) for p in procs] == ["ready", "ready"]
        for p in procs:
            await send(p)
        admitted = [json.loads(await line(p))["admitted"] for p in procs]
        # 10×n attempts from two replicas at once: exactly n fit
        assert sum(admitted) == n, admitted
        check = RedisBudgets(aioredis.Redis.from_url(REDIS_URL), prefix=prefix)
        sp = spec(tokens_per_day=n * est, concurrent_requests=10_000)
        before = (await check.usage("acme", sp))["windows"]
        assert before["tokens_per_day"]["reserved"] == n * est
        assert before["concurrent_requests"]["reserved"] == n
        for p in procs:
            await send(p)
        actual = sum([json.loads(await line(p))["actual"] for p in procs])
        after = (await check.usage("acme", sp))["windows"]
        await check.aclose()
        assert after["tokens_per_day"]["spent"] == actual
        assert after["tokens_per_day"]["reserved"] == 0
        assert after["concurrent_requests"]["reserved"] == 0
        assert [await asyncio.wait_for(p.wait(), 10) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


# ---------------------------------------------------------------------------------------------
# Each window


async def test_requests_per_minute(backend):
    clock = Clock(ts(2030, 6, 15, 12, 0, 15))
    store = backend.make(clock)
    sp = spec(requests_per_minute=3)
    first = await reserve(store, sp)
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert first.headers["x-ratelimit-reset-requests"] == "45s"
    assert "x-ratelimit-limit-tokens" not in first.headers  # no token limit configured
    await reserve(store, sp)
    await store.settle(first, tokens=5, usd=0)  # settling does not give a request back
    await reserve(store, sp)
    with pytest.raises(BudgetExceeded) as ei:
        await reserve(store, sp)
    e = ei.value
    assert (e.code, e.window, e.model) == ("rate_limit_exceeded", "requests_per_minute", None)
    assert e.retry_after == pytest.approx(45.0)
    assert e.headers["Retry-After"] == "45"
    assert e.headers["x-ratelimit-remaining-requests"] == "0"
    assert e.headers["x-ratelimit-limit-requests"] == "3"
    assert "requests_per_minute" in e.message


async def test_tokens_per_minute_counts_actual_usage(backend):
    clock = Clock(ts(2030, 6, 15, 12, 0, 59) + 0.98)
    store = backend.make(clock)
    sp = spec(tokens_per_minute=1000, requests_per_minute=100)
    a = await reserve(store, sp, tokens=400)
    assert a.headers["x-ratelimit-remaining-tokens"] == "600"
    assert a.headers["x-ratelimit-remaining-requests"] == "99"
    assert a.headers["x-ratelimit-reset-tokens"] == "20ms"
    await reserve(store, sp, tokens=400)
    with pytest.raises(BudgetExceeded) as ei:
        await reserve(store, sp, tokens=400)
    assert (ei.value.code, ei.value.window) == ("rate_limit_exceeded", "tokens_per_minute")
    assert ei.value.retry_after == pytest.approx(0.02, abs=1e-6)
    assert ei.value.headers["x-ratelimit-remaining-tokens"] == "200"
    assert ei.value.headers["Retry-After"] == "1"
    await store.settle(a, tokens=100, usd=0)  # 100 spent + 400 reserved: 400 more now fit
    b = await reserve(store, sp, tokens=400)
    assert b.headers["x-ratelimit-remaining-tokens"] == "100"
    # an estimate larger than the whole limit is refused outright
    clock.t += 60
    with pytest.raises(BudgetExceeded):
        await reserve(store, sp, tokens=1001)


async def test_concurrent_requests(backend):
    store = backend.make()
    sp = spec(concurrent_requests=2)
    a = await reserve(store, sp)
    await reserve(store, sp)
    with pytest.raises(BudgetExceeded) as ei:
        await reserve(store, sp)
    e = ei.value
    assert (e.code, e.window, e.retry_after) == ("rate_limit_exceeded", "concurrent_requests", 1.0)
    assert e.headers["Retry-After"] == "1"
    await store.settle(a, tokens=1, usd=0)
    await reserve(store, sp)
    with pytest.raises(BudgetExceeded):
        await reserve(store, sp)
    conc = (await store.usage("acme", sp))["windows"]["concurrent_requests"]
    assert (conc["limit"], conc["reserved"], conc["remaining"], conc["resets_at"]) == (2, 2, 0, None)


@pytest.mark.parametrize(
    ("window", "limit", "est", "resets"),
    [
        ("tokens_per_day", 100, 60, ts(2030, 6, 16)),
        ("tokens_per_month", 100, 60, ts(2030, 7, 1)),
        ("usd_per_month", 1.0, 0.6, ts(2030, 7, 1)),
    ],
)
async def test_quota_windows(backend, window, limit, est, resets):
    store = backend.make()
    sp = spec(**{window: limit})
    tokens, usd = (0, est) if window == "usd_per_month" else (est, 0.0)
    await reserve(store, sp, tokens=tokens, usd=usd)
    with pytest.raises(BudgetExceeded) as ei:
        await reserve(store, sp, tokens=tokens, usd=usd)
    e = ei.value
    assert (e.code, e.window) == ("insufficient_quota", window)
    assert e.retry_after == pytest.approx(resets - T0)
    assert e.headers["Retry-After"] == str(int(resets - T0))  # whole seconds here: ceil is exact
    w = (await store.usage("acme", sp))["windows"][window]
    assert w["resets_at"] == datetime.fromtimestamp(resets, UTC).isoformat().replace("+00:00", "Z")
    assert w["limit"] == limit and w["reserved"] == pytest.approx(est)
    assert w["remaining"] == pytest.approx(limit - est)
    # a request that fits in what is left is still admitted
    await reserve(store, sp, tokens=tokens // 2, usd=usd / 2)


async def test_per_model_override_is_a_separate_window(backend):
    store = backend.make()
    sp = spec(
        requests_per_minute=100,
        tokens_per_minute=10_000,
        model_limits={"big": TenantLimits(requests_per_minute=2, tokens_per_minute=500)},
    )
    a = await reserve(store, sp, model="big", tokens=100)
    # headers show the tightest of the tenant-wide and the model's window
    assert a.headers["x-ratelimit-limit-requests"] == "2"
    assert a.headers["x-ratelimit-remaining-requests"] == "1"
    assert a.headers["x-ratelimit-limit-tokens"] == "500"
    assert a.headers["x-ratelimit-remaining-tokens"] == "400"
    await reserve(store, sp, model="big", tokens=100)
    with pytest.raises(BudgetExceeded) as ei:
        await reserve(store, sp, model="big", tokens=100)
    assert (ei.value.window, ei.value.model, ei.value.code) == ("requests_per_minute", "big", "rate_limit_exceeded")
    assert "'big'" in ei.value.message
    s = await reserve(store, sp, model="small", tokens=100)  # other models only see the tenant windows
    assert s.headers["x-ratelimit-remaining-requests"] == "97"
    doc = await store.usage("acme", sp)
    assert doc["windows"]["requests_per_minute"]["reserved"] == 3
    assert doc["models"]["big"]["requests_per_minute"]["reserved"] == 2
    assert doc["models"]["big"]["tokens_per_minute"]["reserved"] == 200
    assert set(doc["models"]) == {"big"}
    json.dumps(doc)  # JSON-ready


async def test_refusal_reserves_nothing(backend):
    """All-or-nothing: a refusal by one window must not leave reservations in the others."""
    store = backend.make()
    sp = spec(tokens_per_minute=1000, requests_per_minute=10, tokens_per_day=150)
    await reserve(store, sp, tokens=100)
    with pytest.raises(BudgetExceeded) as ei:
        await reserve(store, sp, tokens=100)
    assert ei.value.window == "tokens_per_day"
    w = (await store.usage("acme", sp))["windows"]
    assert w["requests_per_minute"]["reserved"] == 1
    assert w["tokens_per_minute"]["reserved"] == 100
    assert w["tokens_per_month"]["reserved"] == 100


async def test_retry_after_is_the_longest_failing_window(backend):
    store = backend.make()
    sp = spec(requests_per_minute=1, tokens_per_month=10)
    await reserve(store, sp, tokens=10)
    with pytest.raises(BudgetExceeded) as ei:
        await reserve(store, sp, tokens=10)
    assert ei.value.window == "tokens_per_month" and ei.value.code == "insufficient_quota"
    assert ei.value.retry_after == pytest.approx(ts(2030, 7, 1) - T0)
    assert ei.value.headers["x-ratelimit-remaining-requests"] == "0"


async def test_spend_is_recorded_without_limits(backend):
    store = backend.make()
    sp = spec()
    r = await reserve(store, sp, tokens=500, usd=0.5)
    await store.settle(r, tokens=321, usd=0.123)
    w = (await store.usage("acme", sp))["windows"]
    assert set(w) == {"tokens_per_day", "tokens_per_month", "usd_per_month"}
    assert w["tokens_per_day"] == {**w["tokens_per_day"], "limit": None, "spent": 321, "reserved": 0, "remaining": None}
    assert w["tokens_per_month"]["spent"] == 321
    assert w["usd_per_month"]["spent"] == pytest.approx(0.123)
    assert r.headers == {}


# ---------------------------------------------------------------------------------------------
# Window boundaries


async def test_minute_boundary_starts_fresh_without_overwriting(backend):
    clock = Clock(ts(2030, 6, 15, 12, 0, 59))
    store = backend.make(clock)
    sp = spec(requests_per_minute=1, tokens_per_minute=100)
    a = await reserve(store, sp, tokens=80)
    with pytest.raises(BudgetExceeded):
        await reserve(store, sp, tokens=10)
    await store.settle(a, tokens=70, usd=0)
    old_minute = int(clock.t // 60)
    clock.t += 1  # 12:01:00
    b = await reserve(store, sp, tokens=90)
    assert b.headers["x-ratelimit-remaining-tokens"] == "10"
    assert b.headers["x-ratelimit-reset-tokens"] == "1m0s"
    assert await backend.raw("acme", f"rpm:{old_minute}") == (1, 0)
    assert await backend.raw("acme", f"tpm:{old_minute}") == (70, 0)
    assert await backend.raw("acme", f"tpm:{old_minute + 1}") == (0, 90)
    await store.settle(b, tokens=60, usd=0)
    assert await backend.raw("acme", f"tpm:{old_minute}") == (70, 0)  # settle of b lands in its own minute
    assert await backend.raw("acme", f"tpm:{old_minute + 1}") == (60, 0)


async def test_day_and_month_boundaries(backend):
    clock = Clock(ts(2030, 11, 30, 23, 59, 59))
    store = backend.make(clock)
    sp = spec(tokens_per_day=100, usd_per_month=1.0)
    a = await reserve(store, sp, tokens=100, usd=1.0)
    await store.settle(a, tokens=100, usd=1.0)
    with pytest.raises(BudgetExceeded) as ei:
        await reserve(store, sp, tokens=1, usd=0.0)
    assert ei.value.window == "tokens_per_day" and ei.value.retry_after == pytest.approx(1.0)
    clock.t += 1  # 2030-12-01T00:00:00Z: new day and new month
    b = await reserve(store, sp, tokens=100, usd=1.0)
    await store.settle(b, tokens=40, usd=0.25)
    assert await backend.raw("acme", "tok:day:2030-11-30") == (100, 0)
    assert await backend.raw("acme", "tok:month:2030-11") == (100, 0)
    assert await backend.raw("acme", "usd:month:2030-11") == (10**9, 0)
    assert await backend.raw("acme", "tok:day:2030-12-01") == (40, 0)
    assert await backend.raw("acme", "usd:month:2030-12") == (250_000_000, 0)
    w = (await store.usage("acme", sp))["windows"]
    assert w["tokens_per_day"]["resets_at"] == "2030-12-02T00:00:00Z"
    assert w["usd_per_month"]["resets_at"] == "2031-01-01T00:00:00Z"
    assert w["usd_per_month"]["remaining"] == pytest.approx(0.75)


async def test_redis_keys_hash_tag_and_expiry(rclient, prefix):
    clock = Clock(ts(2030, 6, 15, 12, 0, 15))
    store = RedisBudgets(aioredis.Redis.from_url(REDIS_URL), prefix=prefix, now=clock)
    sp = spec(requests_per_minute=5, concurrent_requests=5, model_limits={"big": TenantLimits(tokens_per_day=999)})
    r = await reserve(store, sp, model="big")
    await store.renew()  # publishes this replica's heartbeat (the one key outside a tenant)
    keys = sorted([k.decode() async for k in rclient.scan_iter(match=prefix + "*")])
    assert prefix + "replicas" in keys
    keys.remove(prefix + "replicas")
    assert keys and all(k.startswith(prefix + "{acme}:") for k in keys), keys
    assert prefix + "{acme}:m:big:tok:day:2030-06-15" in keys
    minute = int(clock.t // 60)
    ttl = await rclient.ttl(f"{prefix}{{acme}}:rpm:{minute}")
    real_now = datetime.now(UTC).timestamp()
    assert ttl >= (minute + 1) * 60 - real_now  # expires after the window's end, not before
    assert await rclient.ttl(f"{prefix}{{acme}}:conc") == -1
    assert await rclient.ttl(f"{prefix}{{acme}}:rsv:{r.request_id}") == -1  # no expiry while in flight
    await store.settle(r, tokens=1, usd=0)
    assert 0 < await rclient.ttl(f"{prefix}{{acme}}:rsv:{r.request_id}") <= 300  # minutes, not days
    assert not await rclient.exists(f"{prefix}{{acme}}:rsv")  # nothing in flight: no active set
    await store.aclose()


async def test_script_reloads_after_script_flush(rclient, prefix):
    store = RedisBudgets(aioredis.Redis.from_url(REDIS_URL), prefix=prefix)
    await rclient.script_flush()
    r = await reserve(store, spec(requests_per_minute=1))
    await store.settle(r, tokens=3, usd=0)
    assert (await store.usage("acme", spec()))["windows"]["tokens_per_day"]["spent"] == 3
    await store.aclose()


# ---------------------------------------------------------------------------------------------
# Settle idempotency, reclaim, late settle


async def test_double_settle_counts_once(backend):
    store = backend.make()
    sp = spec(concurrent_requests=2, tokens_per_day=1000)
    a = await reserve(store, sp, tokens=100, usd=0.1)
    await reserve(store, sp, tokens=100)
    await store.settle(a, tokens=30, usd=0.01)
    await store.settle(a, tokens=30, usd=0.01)
    await store.settle(a, tokens=999, usd=5.0)  # a different "actual" is ignored too
    w = (await store.usage("acme", sp))["windows"]
    assert w["tokens_per_day"]["spent"] == 30 and w["tokens_per_day"]["reserved"] == 100
    assert w["usd_per_month"]["spent"] == pytest.approx(0.01)
    assert w["concurrent_requests"]["reserved"] == 1
    await reserve(store, sp)  # one slot was freed...
    with pytest.raises(BudgetExceeded):  # ...not two
        await reserve(store, sp)


async def test_request_id_in_flight_is_rejected_and_a_finished_one_is_a_new_request(backend):
    # Issue 18: a client retry reusing the x-request-id of a FINISHED request used to get 409 for
    # two days. Now only an id still in flight is refused; a finished id starts a new lease, and
    # a replayed settle of the old lease does not touch the new one.
    store = backend.make()
    sp = spec(tokens_per_day=1000, concurrent_requests=5)
    r = await reserve(store, sp, request_id="same")
    with pytest.raises(ValueError):
        await reserve(store, sp, request_id="same")
    await reserve(store, sp, request_id="same", tenant="other")  # scoped to the tenant
    await store.settle(r, tokens=1, usd=0)
    again = await reserve(store, sp, request_id="same", tokens=20)
    assert again.lease != r.lease
    await store.settle(r, tokens=1, usd=0)  # a replay of the first settle: still a no-op
    w = (await store.usage("acme", sp))["windows"]
    assert (w["tokens_per_day"]["spent"], w["tokens_per_day"]["reserved"]) == (1, 20)
    await store.settle(again, tokens=4, usd=0)
    w = (await store.usage("acme", sp))["windows"]
    assert (w["tokens_per_day"]["spent"], w["tokens_per_day"]["reserved"]) == (5, 0)
    assert w["concurrent_requests"]["reserved"] == 0


async def test_expired_reservation_is_reclaimed(backend):
    clock = Clock()
    store = backend.make(clock, reservation_ttl=5.0)
    sp = spec(concurrent_requests=1, tokens_per_month=1000)
    await reserve(store, sp, tokens=400)  # never settled: its replica "crashed"
    clock.t += 4.9
    with pytest.raises(BudgetExceeded):
        await reserve(store, sp, tokens=400)
    clock.t += 0.2
    w = (await store.usage("acme", sp))["windows"]
    assert w["tokens_per_month"]["reserved"] == 0 and w["tokens_per_month"]["spent"] == 0
    assert w["concurrent_requests"]["reserved"] == 0
    await reserve(store, sp, tokens=400)  # the slot is free again


async def test_reserve_reclaims_before_checking(backend):
    clock = Clock()
    store = backend.make(clock, reservation_ttl=5.0)
    sp = spec(concurrent_requests=1)
    await reserve(store, sp)
    clock.t += 6
    b = await reserve(store, sp)  # no usage() in between: reserve itself reclaims
    assert b.request_id


async def test_late_settle_after_reclaim(backend):
    clock = Clock()
    store = backend.make(clock, reservation_ttl=5.0)
    sp = spec(concurrent_requests=1, tokens_per_day=1000)
    late = await reserve(store, sp, tokens=300)
    clock.t += 6
    b = await reserve(store, sp, tokens=200)  # reclaims `late`, takes the only slot
    await store.settle(late, tokens=50, usd=0.02)  # the upstream call did happen: its usage counts
    w = (await store.usage("acme", sp))["windows"]
    assert w["tokens_per_day"]["spent"] == 50
    assert w["tokens_per_day"]["reserved"] == 200  # b's reservation untouched, never negative
    assert w["usd_per_month"]["spent"] == pytest.approx(0.02)
    assert w["concurrent_requests"]["reserved"] == 1  # the late settle did not free b's slot
    with pytest.raises(BudgetExceeded):
        await reserve(store, sp)
    await store.settle(late, tokens=50, usd=0.02)  # and it is idempotent as well
    await store.settle(b, tokens=100, usd=0)
    w = (await store.usage("acme", sp))["windows"]
    assert (w["tokens_per_day"]["spent"], w["tokens_per_day"]["reserved"]) == (150, 0)
    assert w["concurrent_requests"]["reserved"] == 0


async def test_settle_without_a_record_still_records_the_spend_once(backend):
    # The record can be gone (tombstone expired during a long outage, lost in a fail-over): the
    # upstream call happened, so its usage counts, and a second replay is a no-op.
    store = backend.make()
    sp = spec(tokens_per_day=1000)
    r = await reserve(store, sp, tokens=10)
    if backend.kind == "redis":
        await backend.rclient.delete(backend.key("acme", f"rsv:{r.request_id}"))
    else:
        del store._records[("acme", r.request_id)]
    await store.settle(r, tokens=7, usd=0)
    await store.settle(r, tokens=7, usd=0)
    assert (await store.usage("acme", sp))["windows"]["tokens_per_day"]["spent"] == 7
    ghost = Reservation(request_id="ghost", tenant="acme", model="m", tokens=5, usd=0.0, headers={})
    await store.settle(ghost, tokens=5, usd=0)  # names no window: nothing to record
    assert (await store.usage("acme", sp))["windows"]["tokens_per_day"]["spent"] == 7


# ---------------------------------------------------------------------------------------------
# Tenant isolation


async def test_tenants_are_isolated(backend):
    clock = Clock()
    store = backend.make(clock, reservation_ttl=5.0)
    sp = spec(
        requests_per_minute=2, tokens_per_minute=100, concurrent_requests=1, tokens_per_day=100, usd_per_month=1.0,
        model_limits={"m": TenantLimits(requests_per_minute=2)},
    )
    b = await reserve(store, sp, tenant="bravo", tokens=10, usd=0.1)
    before = await store.usage("bravo", sp)
    a = await reserve(store, sp, tenant="alpha", tokens=100, usd=1.0)
    with pytest.raises(BudgetExceeded):
        await reserve(store, sp, tenant="alpha", tokens=1)
    await store.settle(a, tokens=100, usd=1.0)
    await reserve(store, sp, tenant="alpha", tokens=0, usd=0.0, request_id=b.request_id)  # same id, other tenant
    clock.t += 1  # same minute, nothing of bravo's expires
    assert await store.usage("bravo", sp) == before
    await store.settle(b, tokens=10, usd=0.1)
    assert (await store.usage("bravo", sp))["windows"]["tokens_per_day"]["spent"] == 10
    assert (await store.usage("alpha", sp))["windows"]["tokens_per_day"]["spent"] == 100


# ---------------------------------------------------------------------------------------------
# Fail-closed / fail-open


def dead_redis() -> RedisBudgets:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    return RedisBudgets(client, prefix="never:")


async def test_fail_closed_raises_unavailable():
    fb = FailoverBudgets(dead_redis())
    assert fb.mode == "closed" and not fb.degraded
    with pytest.raises(BudgetsUnavailable):
        await reserve(fb, spec(requests_per_minute=1))
    assert fb.degraded and fb.fallback_events == 0
    with pytest.raises(BudgetsUnavailable):  # while probing is paused: fails fast, still closed
        await reserve(fb, spec(requests_per_minute=1))
    with pytest.raises(BudgetsUnavailable):
        await fb.usage("acme", spec())
    assert await fb.ping() is False
    await fb.aclose()


@pytest.fixture
def private_redis():
    server = RedisServer()
    yield server
    server.stop()


def budgets_on(server: RedisServer, **kw) -> RedisBudgets:
    client = aioredis.Redis(host="127.0.0.1", port=server.port, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0))
    return RedisBudgets(client, prefix="t:", health=StoreHealth(client.ping, probe_timeout=0.3, interval=0.2), **kw)


async def wait_for(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_fail_open_admits_a_local_share_journals_and_replays_on_recovery(private_redis, caplog):
    # Issue 13: fail-open used to fall back to a fresh per-process budget and drop that spend.
    fb = FailoverBudgets(budgets_on(private_redis), mode="open")
    sp = spec(tokens_per_day=1000)
    before = await reserve(fb, sp, tokens=300)
    await fb.settle(before, tokens=300, usd=0)  # the last good read: 700 remain
    in_flight = await reserve(fb, sp, tokens=50)
    private_redis.pause()  # hung, not refused: the timeout path
    try:
        with caplog.at_level(logging.WARNING):
            a = await reserve(fb, sp, tokens=400)  # one short timeout, one probe, then the local share
            assert a.backend == "memory" and fb.degraded
            with pytest.raises(BudgetExceeded):  # share = 700 remaining / 1 replica
                await reserve(fb, sp, tokens=400)
            b = await reserve(fb, sp, tokens=200)
            await fb.settle(a, tokens=350, usd=0)
            await fb.settle(b, tokens=150, usd=0)
            await fb.settle(in_flight, tokens=40, usd=0)  # a Redis reservation: queued
            assert fb.pending_settles == 3 and fb.journaled == 2
    finally:
        private_redis.resume()
    await wait_for(lambda: not fb.degraded and fb.pending_settles == 0)  # the background probe recovers
    await asyncio.sleep(0.1)
    w = (await fb.usage("acme", sp))["windows"]["tokens_per_day"]
    assert (w["spent"], w["reserved"]) == (300 + 350 + 150 + 40, 0), "books == delivered usage"
    assert fb.overspend == {}, "within the share: no overspend"
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    await fb.aclose()


async def test_overspend_after_replay_is_measured_and_logged(private_redis, caplog):
    fb = FailoverBudgets(budgets_on(private_redis), mode="open")
    sp = spec(tokens_per_day=100)
    other = budgets_on(private_redis)  # another replica spends after our last read
    first = await reserve(fb, sp, tokens=10)
    await fb.settle(first, tokens=10, usd=0)
    r = await reserve(other, sp, tokens=80)
    await other.settle(r, tokens=80, usd=0)
    await other.aclose()
    private_redis.pause()
    try:
        local = await reserve(fb, sp, tokens=90)  # share from a stale read: 90
        await fb.settle(local, tokens=90, usd=0)
    finally:
        private_redis.resume()
    with caplog.at_level(logging.WARNING, logger="gateway.budgets"):
        await wait_for(lambda: not fb.degraded and fb.pending_settles == 0 and fb.overspend)
    assert fb.overspend == {"tokens_per_day": 80}
    assert (await fb.usage("acme", sp))["windows"]["tokens_per_day"]["spent"] == 180, "fully recorded"
    assert any("over limit" in r.getMessage() for r in caplog.records)
    await fb.aclose()


async def test_concurrent_recoveries_replay_each_settle_exactly_once(prefix):
    # Issue 18: several coroutines replayed the queue at once (IndexError, or a settle dropped).
    primary = RedisBudgets(aioredis.Redis.from_url(REDIS_URL), prefix=prefix)
    fb = FailoverBudgets(primary, mode="closed")
    sp = spec(tokens_per_day=100_000, concurrent_requests=10_000)
    held = [await reserve(fb, sp, tokens=10) for _ in range(120)]
    primary.health.mark_down(ConnectionError("simulated"))
    for i, r in enumerate(held):
        await fb.settle(r, tokens=i % 7 + 1, usd=0)
    assert fb.pending_settles == 120
    primary.health.down = False
    results = await asyncio.gather(*(fb.ping() for _ in range(40)), return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    # On a loaded machine a ping can time out (and re-open the outage): recover, bounded.
    for _ in range(20):
        if all(r is True for r in results) or await fb.ping():
            break
        await asyncio.sleep(0.1)
    await fb.drain()
    w = (await primary.usage("acme", sp))["windows"]
    assert w["tokens_per_day"]["spent"] == sum(i % 7 + 1 for i in range(120))
    assert w["tokens_per_day"]["reserved"] == 0 and w["concurrent_requests"]["reserved"] == 0
    assert fb.pending_settles == 0 and fb.dropped == 0
    await fb.aclose()


async def test_local_back_pressure_is_busy_not_an_outage(prefix):
    # Issue 13: pool exhaustion under a burst was read as "Redis is down" (500s, fail-open).
    primary = RedisBudgets(aioredis.Redis.from_url(REDIS_URL), prefix=prefix, gate=Gate(size=2, wait=0.0))
    fb = FailoverBudgets(primary, mode="open")
    sp = spec(tokens_per_day=10_000, concurrent_requests=10_000)
    got = await asyncio.gather(*(reserve(fb, sp) for _ in range(60)), return_exceptions=True)
    busy = [g for g in got if isinstance(g, BudgetsBusy)]
    assert busy and all(isinstance(g, (Reservation, BudgetsBusy)) for g in got)
    assert not fb.degraded and fb.fallback_events == 0, "the fail mode never flipped"
    assert all(g.backend == "redis" for g in got if isinstance(g, Reservation))
    assert classify(redis_errors.ConnectionError("No connection available.")) is Failure.BUSY
    assert classify(redis_errors.MaxConnectionsError("Too many connections")) is Failure.BUSY
    assert classify(redis_errors.ConnectionError("Connection refused")) is Failure.DOWN
    await fb.aclose()


async def test_leases_are_renewed_while_alive_and_expire_after_a_crash(prefix):
    sp = spec(concurrent_requests=1)
    live = RedisBudgets(aioredis.Redis.from_url(REDIS_URL), prefix=prefix, lease=1.0)
    other = RedisBudgets(aioredis.Redis.from_url(REDIS_URL), prefix=prefix, lease=1.0)
    held = await reserve(live, sp)
    await asyncio.sleep(2.0)  # 2 leases: renewed every 0.33 s, so still held
    with pytest.raises(BudgetExceeded):
        await reserve(other, sp)
    await other.renew()
    assert live.renewals >= 3 and other.replicas == 2, "each replica heartbeats: the fail-open share is 1/2"
    await live.aclose()  # the replica "crashes": no settle, no more renewals
    await asyncio.sleep(1.2)
    await reserve(other, sp)  # one lease later the slot is free again
    await other.aclose()
    assert held.request_id


# ---------------------------------------------------------------------------------------------
# Small pieces


def test_openai_duration_format():
    assert openai_duration(0.02) == "20ms"
    assert openai_duration(1) == "1s"
    assert openai_duration(360) == "6m0s"
    assert openai_duration(90.5) == "1m30.5s"
    assert openai_duration(3 * 3600 + 2) == "3h0m2s"


def test_memory_and_redis_satisfy_the_protocol():
    assert isinstance(MemoryBudgets(), Budgets)
    assert isinstance(FailoverBudgets(dead_redis()), Budgets)


def test_state_layer_metrics_report_outage_journal_and_overspend():
    from gateway.telemetry import Telemetry

    tel = Telemetry(otlp_endpoint="")
    tel.state_layer(False, 3, {"tokens_per_day": 80})
    text = tel.metrics_text()[0].decode()
    tel.shutdown()
    assert "gateway_state_store_up 0" in text and "gateway_budget_journal_pending 3" in text
    assert 'gateway_budget_overspend{window="tokens_per_day"} 80' in text
