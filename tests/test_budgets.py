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

from gateway.budgets import (
    BudgetExceeded,
    Budgets,
    BudgetsUnavailable,
    FailoverBudgets,
    MemoryBudgets,
    RedisBudgets,
    Reservation,
    openai_duration,
)
from policies.schema import TenantLimits, TenantSpec

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
                aioredis.Redis.from_url(REDIS_URL), prefix=self.prefix, reservation_ttl=reservation_ttl, now=clock
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
    keys = sorted([k.decode() async for k in rclient.scan_iter(match=prefix + "*")])
    assert keys and all(k.startswith(prefix + "{acme}:") for k in keys), keys
    assert prefix + "{acme}:m:big:tok:day:2030-06-15" in keys
    minute = int(clock.t // 60)
    ttl = await rclient.ttl(f"{prefix}{{acme}}:rpm:{minute}")
    real_now = datetime.now(UTC).timestamp()
    assert ttl >= (minute + 1) * 60 - real_now  # expires after the window's end, not before
    assert await rclient.ttl(f"{prefix}{{acme}}:conc") == -1
    assert await rclient.ttl(f"{prefix}{{acme}}:rsv:{r.request_id}") == -1  # no expiry while in flight
    await store.settle(r, tokens=1, usd=0)
    assert 0 < await rclient.ttl(f"{prefix}{{acme}}:rsv:{r.request_id}") <= 2 * 86400
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


async def test_duplicate_request_id_is_rejected(backend):
    store = backend.make()
    sp = spec(tokens_per_day=1000)
    r = await reserve(store, sp, request_id="same")
    with pytest.raises(ValueError):
        await reserve(store, sp, request_id="same")
    await store.settle(r, tokens=1, usd=0)
    with pytest.raises(ValueError):
        await reserve(store, sp, request_id="same")
    assert (await store.usage("acme", sp))["windows"]["tokens_per_day"]["spent"] == 1


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


async def test_settle_unknown_request_is_a_noop(backend):
    store = backend.make()
    sp = spec(tokens_per_day=10)
    ghost = Reservation(request_id="ghost", tenant="acme", model="m", tokens=5, usd=0.0, headers={})
    await store.settle(ghost, tokens=5, usd=0)
    assert (await store.usage("acme", sp))["windows"]["tokens_per_day"]["spent"] == 0


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


async def test_fail_open_serves_from_memory(caplog):
    fb = FailoverBudgets(dead_redis(), mode="open", probe_interval=0.0)
    sp = spec(requests_per_minute=2)
    with caplog.at_level(logging.WARNING, logger="gateway.budgets"):
        a = await reserve(fb, sp)
        await reserve(fb, sp)
        with pytest.raises(BudgetExceeded):  # limits still hold, locally
            await reserve(fb, sp)
    assert a.backend == "memory" and fb.degraded and fb.fallback_events == 3
    assert len([r for r in caplog.records if r.name == "gateway.budgets"]) == 1  # once per outage
    await fb.settle(a, tokens=42, usd=0.0)
    doc = await fb.usage("acme", sp)
    assert doc["degraded"] is True and doc["windows"]["tokens_per_day"]["spent"] == 42
    assert await fb.ping() is True and fb.degraded  # serving, but degraded
    await fb.aclose()


class Flaky:
    """Wraps a RedisBudgets' script runner to simulate an outage on demand."""

    def __init__(self, store: RedisBudgets) -> None:
        self.down = False
        self._run = store._run
        store._run = self  # type: ignore[method-assign]

    async def __call__(self, keys, args):
        if self.down:
            raise BudgetsUnavailable("simulated outage")
        return await self._run(keys, args)


async def test_settle_goes_to_the_backend_of_its_reserve(prefix):
    primary = RedisBudgets(aioredis.Redis.from_url(REDIS_URL), prefix=prefix)
    flaky = Flaky(primary)
    primary.ping = lambda: _const(not flaky.down)  # type: ignore[method-assign]
    fb = FailoverBudgets(primary, mode="open", probe_interval=0.0)
    sp = spec(tokens_per_day=1000)
    on_redis = await reserve(fb, sp, tokens=100)
    assert on_redis.backend == "redis"
    flaky.down = True
    on_memory = await reserve(fb, sp, tokens=100)
    assert on_memory.backend == "memory" and fb.degraded
    await fb.settle(on_redis, tokens=60, usd=0)  # Redis unreachable: queued, not lost, not raised
    assert fb.pending_settles == 1
    flaky.down = False
    assert await fb.ping() is True and not fb.degraded and fb.pending_settles == 0
    await fb.settle(on_memory, tokens=7, usd=0)  # after recovery, still to memory
    await fb.settle(on_redis, tokens=60, usd=0)  # replayed already: no double count
    assert (await primary.usage("acme", sp))["windows"]["tokens_per_day"] | {"resets_at": None} == {
        "limit": 1000, "spent": 60, "reserved": 0, "remaining": 940, "resets_at": None}
    assert (await fb.memory.usage("acme", sp))["windows"]["tokens_per_day"]["spent"] == 7
    await fb.aclose()


async def _const(v):
    return v


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
