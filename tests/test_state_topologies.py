"""The state layer on real Redis topologies started locally: a 3-master Cluster and a
master/replica pair under Sentinel. Budgets, breakers and the cache store work on both; a
Sentinel fail-over (the master killed) during load loses no settled spend and the client
follows the new master without a restart."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from cache.store import RedisStore
from gateway.breaker import BreakerConfig, Breakers, RedisBreakerStore
from gateway.budgets import (
    BudgetExceeded,
    BudgetsUnavailable,
    FailoverBudgets,
    RedisBudgets,
)
from state import RedisConfig, SharedState, parse_url
from policies.schema import TenantLimits, TenantSpec
from tests.redis_servers import Cluster, SentinelSet


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.stop()


def shared(url: str, **kw) -> SharedState:
    return SharedState.connect(RedisConfig(url=url, timeout=0.5, **kw), "t:", probe_interval=0.2)


def test_url_forms_and_clear_errors():
    assert parse_url("redis+cluster://a:7000,b:7001").nodes == (("a", 7000), ("b", 7001))
    s = parse_url("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2")
    assert (s.kind, s.master, s.db, s.password, s.nodes[1]) == ("sentinel", "mymaster", 2, "pw", ("s2", 26380))
    assert parse_url("rediss://h:6380/0").tls
    for bad in ("http://h:1", "redis+sentinel://h:1", "redis+cluster://h:1/3", "redis://h:port"):
        with pytest.raises(ValueError):
            parse_url(bad)


async def _budgets_breakers_cache(state: SharedState) -> None:
    tenant = "t" + uuid.uuid4().hex[:6]
    budgets = RedisBudgets(state.redis, prefix=state.prefix, gate=state.gate, health=state.health, owns_client=False)
    sp = TenantSpec(limits=TenantLimits(tokens_per_day=100, concurrent_requests=50, requests_per_minute=1000))
    assert await state.start()  # what the app does at startup (discovers the topology)
    got = await asyncio.gather(*(budgets.reserve(tenant=tenant, spec=sp, model="m", request_id=f"r{i}", tokens=10, usd=0.001)
                                 for i in range(30)), return_exceptions=True)
    ok = [g for g in got if not isinstance(g, BaseException)]
    assert len(ok) == 10 and all(isinstance(g, BudgetExceeded) for g in got if isinstance(g, BaseException))
    assert await budgets.renew() == 10 and budgets.replicas >= 1  # leases and the heartbeat work here too
    await asyncio.gather(*(budgets.settle(r, tokens=7, usd=0.001) for r in ok))
    w = (await budgets.usage(tenant, sp))["windows"]
    assert (w["tokens_per_day"]["spent"], w["tokens_per_day"]["reserved"], w["concurrent_requests"]["reserved"]) == (70, 0, 0)
    await budgets.aclose()

    breakers = Breakers(RedisBreakerStore(state.redis, prefix=state.prefix + "brk:", health=state.health),
                        BreakerConfig(min_calls=3, window_seconds=10))
    for key in ("a", "b", "c"):  # keys land on different slots/nodes
        for _ in range(3):
            await breakers.record(f"{tenant}-{key}", ok=False, seconds=0.01)
    snap = await breakers.snapshot()
    assert {snap[f"{tenant}-{k}"]["state"] for k in "abc"} == {"open"}

    store = RedisStore(state.redis, prefix=state.prefix + "cache:", health=state.health)
    await store.set(f"{tenant}:k", b"v" * 1000, 30)
    assert await store.get(f"{tenant}:k") == b"v" * 1000 and store.errors == 0


async def test_cluster_budgets_breakers_and_cache(cluster):
    state = shared(cluster.url)
    try:
        await _budgets_breakers_cache(state)
    finally:
        await state.aclose()


async def test_sentinel_failover_under_load_loses_no_settled_spend():
    s = SentinelSet(down_after_ms=600)
    state = shared(s.url)
    fb = FailoverBudgets(RedisBudgets(state.redis, prefix="t:", gate=state.gate, health=state.health, owns_client=False,
                                      confirm_replicas=1), mode="closed")  # as the app builds it on Sentinel
    sp = TenantSpec(limits=TenantLimits(tokens_per_day=10**9, concurrent_requests=10**6))
    delivered = 0
    refused = 0
    try:
        await _budgets_breakers_cache(state)
        old_master = s.master_port()

        async def one(i: int) -> None:
            nonlocal delivered, refused
            try:
                r = await fb.reserve(tenant="load", spec=sp, model="m", request_id=f"q{i}", tokens=5, usd=0)
            except BudgetsUnavailable:  # fail-closed during the switch: refused, nothing delivered
                refused += 1
                return
            await asyncio.sleep(0.01)  # the "upstream call"
            delivered += 3
            await fb.settle(r, tokens=3, usd=0)

        i = 0
        deadline = time.monotonic() + 25
        killed = False
        while time.monotonic() < deadline:
            await asyncio.gather(*(one(i + k) for k in range(10)))
            i += 10
            if not killed and i >= 100:
                s.master.stop()  # kill -9 the master mid-load
                killed = True
            if killed and s.master_port() != old_master and not fb.degraded and i % 100 == 0:
                break
            await asyncio.sleep(0.02)
        assert killed and s.master_port() != old_master, "sentinel promoted the replica"
        for _ in range(100):  # recovered without a restart: reserves go through again
            try:
                r = await fb.reserve(tenant="load", spec=sp, model="m", request_id=f"after{_}", tokens=5, usd=0)
                break
            except BudgetsUnavailable:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("no recovery after the fail-over")
        delivered += 3
        await fb.settle(r, tokens=3, usd=0)
        await fb.drain()
        assert fb.pending_settles == 0
        w = (await fb.usage("load", sp))["windows"]
        assert w["tokens_per_day"]["spent"] == delivered, (delivered, refused)
    finally:
        await fb.aclose()
        await state.aclose()
        s.stop()


async def test_sentinel_settle_no_replica_acknowledged_survives_the_failover():
    # Replication is asynchronous: a settle acknowledged by a master that dies before its replica
    # received it would vanish with the promotion. Such a settle (WAIT saw no replica) is held and
    # replayed once the new master answers.
    s = SentinelSet(down_after_ms=600)
    state = shared(s.url)
    fb = FailoverBudgets(RedisBudgets(state.redis, prefix="t:", gate=state.gate, health=state.health, owns_client=False,
                                      confirm_replicas=1, confirm_timeout=0.1), mode="closed")
    sp = TenantSpec(limits=TenantLimits(tokens_per_day=10**6))
    try:
        assert await state.start()
        r = await fb.reserve(tenant="t", spec=sp, model="m", request_id="one", tokens=10, usd=0)
        await asyncio.sleep(0.3)  # the reservation reaches the replica
        s.replica.client().execute_command("REPLICAOF", "NO", "ONE")  # replication cut: the write stays on the master
        await fb.settle(r, tokens=42, usd=0)
        s.master.stop()  # the master dies with the settle only in its memory
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                w = (await fb.usage("t", sp))["windows"]["tokens_per_day"]
                if w["spent"] == 42 and fb.pending_settles == 0:
                    break
            except BudgetsUnavailable:
                pass
            await asyncio.sleep(0.2)
        assert s.master_port() == s.replica.port, "the replica was promoted"
        assert (w["spent"], w["reserved"]) == (42, 0)
    finally:
        await fb.aclose()
        await state.aclose()
        s.stop()
