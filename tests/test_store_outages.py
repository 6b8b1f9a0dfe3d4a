"""Real store outages seen through real gateway processes: readiness reports what requests get,
the store state follows the outage without flapping, and on a Cluster with replicas a master
killed while its replica lags loses no settled spend.

Every Redis here is private (its own ports): a Cluster of 3 masters with a replica each, or one
plain server. Loops are bounded by deadlines.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from state import RedisConfig, SharedState
from tests.gateway_proc import GatewayProcess
from tests.redis_servers import Cluster, RedisServer
from tests.test_budgets_http import ADMIN, KEY_A, MESSAGES, policy_for, upstream  # noqa: F401  (fixture)

TENANT_KEY = "{team-a}"  # every budget key of tenant team-a carries this hash tag: one slot, one master


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(replicas=1, node_timeout_ms=1000)
    yield c
    c.stop()


def ask(gw: GatewayProcess) -> int:
    try:
        return httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {KEY_A}"},
                          json={"model": "budgeted", "messages": MESSAGES, "max_tokens": 10}, timeout=10).status_code
    except httpx.HTTPError:
        return 0


def ready(gw: GatewayProcess) -> int:
    return httpx.get(gw.root_url + "/readyz", timeout=10).status_code


def spent(gw: GatewayProcess) -> int | None:
    response = httpx.get(f"{gw.root_url}/admin/tenants/team-a/usage", headers={"authorization": f"Bearer {ADMIN}"},
                         timeout=10)
    if response.status_code != 200:
        return None
    window = response.json()["windows"]["tokens_per_day"]
    return window["spent"] if window["reserved"] == 0 else None


def watch(gw: GatewayProcess, seconds: float) -> list[tuple[int, int]]:
    """(request status, readiness status) pairs, one after the other, for `seconds`."""
    pairs = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pairs.append((ask(gw), ready(gw)))
        time.sleep(0.05)
    return pairs


def log_count(gw: GatewayProcess, text: str) -> int:
    return gw.log_path.read_text(errors="replace").count(text)


def recovered(gw: GatewayProcess, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ask(gw) == 200 and ready(gw) == 200:
            return True
        time.sleep(0.2)
    return False


async def test_cluster_health_probe_asks_every_master():
    # A plain RedisCluster.ping is answered by one node: with another master dead it said "up".
    c = Cluster()  # no replicas: a dead master stays dead
    state = SharedState.connect(RedisConfig(url=c.url, timeout=0.5), "t:")
    try:
        assert await state.start() and await state.health.probe()
        answering = state.probe_client.get_default_node().port
        next(n for n in c.nodes if n.port != answering).stop()
        assert not await state.health.probe()
    finally:
        await state.aclose()
        c.stop()


async def test_one_missed_readiness_probe_is_not_an_outage():
    # A store that misses one probe (frozen for a moment) and answers the next stays up; one that
    # answers neither is marked down (and requests then fail fast too).
    server = RedisServer()
    state = SharedState.connect(RedisConfig(url=server.url, timeout=0.5), "t:")
    try:
        assert await state.start()
        state.health.probe_timeout = 0.3
        server.pause()
        loop = asyncio.get_running_loop()
        loop.call_later(0.4, server.resume)  # back during the second probe
        assert await state.health.check() and not state.health.down
        server.pause()
        try:
            assert not await state.health.check() and state.health.down
        finally:
            server.resume()
    finally:
        await state.aclose()
        server.stop()


def test_cluster_master_killed_readiness_follows_requests_without_flapping(tmp_path, upstream, cluster):
    policy = policy_for(tmp_path, upstream, "{tokens_per_day: 1000000}")
    with GatewayProcess(policy, redis_url=cluster.url) as gw:
        assert ask(gw) == 200 and ready(gw) == 200
        cluster.owner(TENANT_KEY).stop()  # kill -9 the master of the tenant's slot
        during = watch(gw, 2.0)  # the cluster needs > 1 s (its node timeout) to promote the replica
        assert recovered(gw, 20), gw.log()
        refused = [pair for pair in during if pair[0] == 503]
        assert refused, during  # fail-closed: the outage was seen by requests
        # Readiness says what requests get: a replica refusing requests is not ready. A request
        # and the readiness poll after it may straddle the recovery, once.
        assert sum(1 for request, readiness in during if request == 503 and readiness == 200) <= 1, during
        log = gw.log()
        assert log_count(gw, "reachable again") == 1, log
        assert log_count(gw, "recovery step failed") == 0, log


def test_frozen_store_readiness_follows_requests(tmp_path, upstream):
    server = RedisServer()
    policy = policy_for(tmp_path, upstream, "{tokens_per_day: 1000000}")
    try:
        with GatewayProcess(policy, redis_url=server.url) as gw:
            assert ask(gw) == 200 and ready(gw) == 200
            server.pause()  # SIGSTOP: connections open, nothing answers
            try:
                during = watch(gw, 3.0)
            finally:
                server.resume()
            assert recovered(gw, 10), gw.log()
            assert during and all(request == 503 for request, _ in during[1:]), during
            assert all(readiness == 503 for _, readiness in during), during
            assert log_count(gw, "reachable again") == 1, gw.log()
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_cluster_master_killed_while_its_replica_lags_loses_no_settled_spend(tmp_path, upstream, mode):
    cluster = Cluster(replicas=1, node_timeout_ms=1000)  # one per case: a fail-over reshapes it
    policy = policy_for(tmp_path, upstream, "{tokens_per_day: 1000000}")
    try:
        with GatewayProcess(policy, redis_url=cluster.url, extra_args=["--budgets-fail-mode", mode]) as gw:
            assert ask(gw) == 200
            master = cluster.owner(TENANT_KEY)
            replica = cluster.replica_of(master)
            # The replica lags: frozen, and its link cut by the master (a frozen replica alone would
            # still get the stream from its socket buffer on waking), so settles reach the master only.
            replica.pause()
            master.client().execute_command("CLIENT", "KILL", "TYPE", "replica")
            try:
                answered = sum(ask(gw) == 200 for _ in range(12))
                time.sleep(0.5)  # the settles (after each reply, each waiting at most 0.2 s for a replica)
                master.stop()  # the master dies with the settles only in its memory
            finally:
                replica.resume()  # ... and the lagging replica is promoted without them
            assert recovered(gw, 30), gw.log()
            expected = (answered + 2) * 10  # 7 prompt + 3 completion tokens each, plus the two probes
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and spent(gw) != expected:
                time.sleep(0.2)
            assert spent(gw) == expected, (spent(gw), expected, answered, gw.log())
    finally:
        cluster.stop()
