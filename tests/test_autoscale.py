"""The autoscaling advisor: a deterministic simulation (ramp, spike, plateau, decay) with exact
scale-up and scale-down moments, a randomised no-flap property, the per-signal arithmetic, the
sampler over real HTTP engine stubs, and the admin endpoint and gauges of a real gateway."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import uuid

import aiohttp
import httpx
import msgspec
import pytest
from aiohttp import web

from gateway.auth import hash_key
from gateway.autoscale import Advisor, AutoscaleSampler, ReplicaLoad, load_url, recommend
from policies.loader import PolicyError, parse_policy
from policies.schema import AutoscaleSpec, TargetSpec
from providers.selfhost import SelfHostProvider
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess

STEP = 5.0  # seconds between samples, as the runtime sampler's default


# -- the pure core -----------------------------------------------------------------------------


def test_each_signal_can_limit_and_bounds_apply():
    spec = AutoscaleSpec(min_replicas=1, max_replicas=10, waiting_requests=4, queued_prefill_tokens=1000,
                         active_decode_tokens=5000, kv_usage=0.5)
    two = [ReplicaLoad(), ReplicaLoad()]
    assert recommend(spec, two) == (1, "min_replicas")
    assert recommend(spec, [ReplicaLoad(waiting=9), ReplicaLoad(waiting=4)]) == (4, "waiting_requests")
    assert recommend(spec, [ReplicaLoad(queued_prefill_tokens=2500), ReplicaLoad(waiting=1)]) == (3, "queued_prefill_tokens")
    assert recommend(spec, [ReplicaLoad(active_decode_tokens=9000)] * 2) == (4, "active_decode_tokens")
    assert recommend(spec, [ReplicaLoad(kv_usage=0.9), ReplicaLoad(kv_usage=0.6)]) == (3, "kv_usage")
    # Exactly at capacity needs no extra replica, despite float sums (0.25 * 4 = 1.0000000000000002).
    assert recommend(spec, [ReplicaLoad(kv_usage=0.25)] * 4) == (2, "kv_usage")
    assert recommend(spec, [ReplicaLoad(waiting=400)]) == (10, "max_replicas")
    # Ties go to the first signal in table order.
    assert recommend(spec, [ReplicaLoad(waiting=8, queued_prefill_tokens=2000)]) == (2, "waiting_requests")
    # A disabled signal is ignored; the warm pool adds idle replicas on top of the need.
    warm = AutoscaleSpec(min_replicas=1, max_replicas=10, warm_pool=2, kv_usage=None)
    assert recommend(warm, [ReplicaLoad(kv_usage=1.0)]) == (2, "idle")
    assert recommend(warm, [ReplicaLoad(waiting=12)]) == (5, "waiting_requests")
    assert ReplicaLoad.from_json({"waiting": 3, "kv_usage": 0.5, "running": 7, "extra": "x"}) == ReplicaLoad(
        waiting=3, kv_usage=0.5)


def _waiting_trace(t: float) -> float:
    """Fleet-wide waiting requests: quiet, ramp, plateau (oscillating, with a 30 s spike), decay, quiet."""
    if t < 300:
        return 2.0
    if t < 600:
        return 2.0 + 30.0 * (t - 300) / 300
    if t < 1500:
        if 1000 <= t < 1030:
            return 80.0  # a burst shorter than the scale-up window
        return 30.0 + 3.0 * math.sin(2 * math.pi * t / 40)  # raw recommendation swings 7..9
    if t < 1800:
        return 30.0 - 28.0 * (t - 1500) / 300
    return 2.0


def _simulate(spec: AutoscaleSpec, until: float = 2700.0):
    """Drive the advisor with the trace, sampled every STEP s. The fleet follows the advice (the
    load is spread over as many replicas as the advice says); only the fleet's sums matter."""
    advisor = Advisor("fleet", spec)
    timeline = []
    replicas = 1
    for i in range(int(until / STEP) + 1):
        t = i * STEP
        total = _waiting_trace(t)
        advice = advisor.observe(t, [ReplicaLoad(waiting=total / replicas)] * replicas)
        replicas = advice.desired
        timeline.append((t, advice))
    return timeline


def test_simulated_trace_scales_up_late_never_flaps_and_scales_down_later():
    spec = AutoscaleSpec(min_replicas=1, max_replicas=12, waiting_requests=4, queued_prefill_tokens=None,
                         kv_usage=None)  # defaults: 60 s up, 300 s down
    timeline = _simulate(spec)
    desired = {t: a.desired for t, a in timeline}
    raw = {t: a.recommended for t, a in timeline}

    # Quiet: the minimum. The ramp first asks for 2 replicas at t=325 (4.5 waiting): the advice
    # follows only once that held for the whole 60 s window.
    assert all(desired[t] == 1 for t in desired if t < 385)
    assert min(t for t in raw if raw[t] > 1) == 325
    assert desired[385] == 2
    # While the load rises, the advice is the recommendation of 60 s before: never ahead of it.
    for t in range(385, 600, 5):
        assert desired[t] == raw[t - 60] <= raw[t], t

    # The 30 s spike asks for the maximum (capped) but is never followed.
    assert {timeline[int(t / STEP)][1].signal for t in range(1000, 1030, 5)} == {"max_replicas"}
    assert max(raw[t] for t in range(1000, 1030, 5)) == 12
    assert max(desired.values()) <= 9

    # Plateau: the raw recommendation swings 7..9 every 40 s; the advice does not move.
    assert {raw[t] for t in range(700, 1000, 5)} == {7, 8, 9}
    plateau = {desired[t] for t in range(660, 1500, 5)}
    assert len(plateau) == 1 and 7 <= min(plateau) <= 9
    level = plateau.pop()

    # No flapping: one rise, one fall, over the whole trace.
    changes = [(t, desired[t] - desired[t - STEP]) for t in list(desired)[1:] if desired[t] != desired[t - STEP]]
    signs = [1 if d > 0 else -1 for _, d in changes]
    assert signs == sorted(signs, reverse=True), changes
    ups = [t for t, d in changes if d > 0]
    downs = [t for t, d in changes if d < 0]
    assert ups and downs and max(ups) < 700 and min(downs) > 1500

    # Decay: the advice drops only once no sample of the last 300 s asked for the plateau's level,
    # then follows the recommendation of 300 s before, down to the minimum.
    last_high = max(t for t in range(1500, 1800, 5) if raw[t] >= level)
    assert 1500 <= last_high < 1600
    assert min(downs) == last_high + 300 + STEP and desired[min(downs)] == raw[last_high + STEP] < level
    for t in range(int(min(downs)), 2100, 5):
        assert desired[t] == raw[t - 300] >= raw[t], t
    assert desired[2075] > 1 and all(desired[t] == 1 for t in desired if t >= 2080)


@pytest.mark.parametrize("seed", range(25))
def test_random_traces_never_flap(seed):
    """After a rise the advice cannot fall within the scale-down window, and after a fall it cannot
    rise within the scale-up window, whatever the load does (irregular sample times included)."""
    rng = random.Random(seed)
    up, down = rng.choice([(60, 300), (30, 120), (0, 60), (10, 10)])
    spec = AutoscaleSpec(min_replicas=1, max_replicas=20, waiting_requests=4, queued_prefill_tokens=None,
                         kv_usage=None, scale_up_seconds=up, scale_down_seconds=down)
    advisor = Advisor("x", spec)
    t, level, last = 0.0, 10.0, None
    events: list[tuple[float, int]] = []
    for _ in range(600):
        t += rng.choice([1.0, 2.5, 5.0, 7.0])
        level = max(0.0, level + rng.gauss(0, 6))
        loads = [] if rng.random() < 0.05 else [ReplicaLoad(waiting=level / 2)] * 2
        advice = advisor.observe(t, loads)
        if last is not None and advice.desired != last:
            events.append((t, 1 if advice.desired > last else -1))
        last = advice.desired
        assert 1 <= advice.desired <= 20
    for (t1, d1), (t2, d2) in zip(events, events[1:]):
        if d1 > 0 > d2:
            assert t2 - t1 > down, (t1, t2)
        if d1 < 0 < d2:
            assert t2 - t1 > up, (t1, t2)
    assert events  # the random walk does move the advice


def test_missing_data_holds_and_time_must_not_go_back():
    spec = AutoscaleSpec(min_replicas=2, max_replicas=6, scale_up_seconds=0, scale_down_seconds=0)
    advisor = Advisor("x", spec)
    assert advisor.observe(0, []).desired == 2 and advisor.advice.signal == "no_data"
    assert advisor.observe(1, [ReplicaLoad(waiting=20)]).desired == 5  # the first real sample seeds
    held = advisor.observe(2, [])
    assert (held.desired, held.signal, held.replicas, held.changed_at) == (5, "no_data", 0, 1)
    assert advisor.observe(3, [ReplicaLoad(waiting=1)]).desired == 2  # zero-length windows follow at once
    with pytest.raises(ValueError, match="backwards"):
        advisor.observe(2.5, [ReplicaLoad()])


def test_policy_block_is_validated_with_a_line():
    base = """
        targets:
          fleet:
            provider: selfhost
            model: m
            base_url: http://127.0.0.1:9/v1
            autoscale: {autoscale}
          managed:
            provider: openai
            model: gpt
            autoscale: {{max_replicas: 2}}
        models:
          m: {{targets: [fleet]}}
    """
    with pytest.raises(PolicyError) as bad_bounds:
        parse_policy(base.format(autoscale="{min_replicas: 5, max_replicas: 2}"))
    assert "min_replicas (5) is above max_replicas (2)" in str(bad_bounds.value) and ":7:" in str(bad_bounds.value)
    with pytest.raises(PolicyError, match="at least one per-replica capacity target"):
        parse_policy(base.format(autoscale="{waiting_requests: null, queued_prefill_tokens: null, kv_usage: null}"))
    with pytest.raises(PolicyError, match="kv_usage"):
        parse_policy(base.format(autoscale="{kv_usage: 1.5}"))
    with pytest.raises(PolicyError, match="targets.managed.autoscale: autoscale advice is for selfhost"):
        parse_policy(base.format(autoscale="{max_replicas: 3}"))


# -- the sampler over real HTTP ----------------------------------------------------------------


class LoadStub:
    """An engine's `/healthz`, `/readyz` and `/load` on a loopback port, load set by the test."""

    def __init__(self) -> None:
        self.load: dict | str = {"waiting": 0, "queued_prefill_tokens": 0, "active_decode_tokens": 0, "kv_usage": 0.0}
        self.status = 200
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        async def ok(_):
            return web.json_response({"status": "ok"}, status=self.status)

        async def load(_):
            if isinstance(self.load, str):
                return web.Response(text=self.load, status=self.status)
            return web.json_response(self.load, status=self.status)

        async def boot() -> None:
            app = web.Application()
            app.router.add_get("/healthz", ok)
            app.router.add_get("/readyz", ok)
            app.router.add_get("/load", load)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self._ready.set()

        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(boot())
        self._loop.run_forever()

    def __enter__(self) -> "LoadStub":
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def stubs():
    with LoadStub() as a, LoadStub() as b, LoadStub() as c:
        yield a, b, c


def _target(endpoints: list[str], **autoscale) -> TargetSpec:
    return msgspec.convert({"provider": "selfhost", "model": "m", "endpoints": endpoints,
                            "autoscale": {"scale_up_seconds": 0, "scale_down_seconds": 0, **autoscale}}, TargetSpec)


def test_load_url():
    assert load_url("http://h:8000/v1") == load_url("http://h:8000/v1/") == load_url("http://h:8000") == "http://h:8000/load"


async def test_sampler_reads_balancer_and_polls_single_endpoints(stubs):
    a, b, c = stubs
    a.load = {"waiting": 6, "queued_prefill_tokens": 100, "kv_usage": 0.2}
    b.load = {"waiting": 5, "queued_prefill_tokens": 50, "kv_usage": 0.1}
    c.load = {"waiting": 1, "queued_prefill_tokens": 30000, "kv_usage": 0.3}
    published = []
    async with aiohttp.ClientSession() as session:
        fleet = SelfHostProvider("fleet", _target([a.url, b.url]), session)  # two endpoints: a balancer
        single = SelfHostProvider("single", _target([c.url], max_replicas=3), session)  # polled directly
        plain = SelfHostProvider("plain", msgspec.convert({"provider": "selfhost", "model": "m",
                                                            "base_url": c.url}, TargetSpec), session)
        providers = {"fleet": fleet, "single": single, "plain": plain}
        sampler = AutoscaleSampler(lambda: providers, session, published.append)
        await fleet.balancer.poll_once()  # what its background loop does every poll_interval
        produced = await sampler.sample_once()
        assert set(produced) == {"fleet", "single"}  # no autoscale block: no advice
        assert (produced["fleet"].desired, produced["fleet"].signal, produced["fleet"].replicas) == (3, "waiting_requests", 2)
        assert (produced["single"].desired, produced["single"].signal) == (3, "max_replicas")  # 30000/8192 -> 4, capped
        assert [p.target for p in published] == ["fleet", "single"]
        # Not due again before sample_seconds (default 5 s).
        assert await sampler.sample_once() == {} and 0.1 <= sampler.next_delay() <= 5.0

        # A replica that answers garbage, an error or nothing is not counted; none left holds the advice.
        c.load = "not json"
        sampler._due.clear()
        assert (await sampler.sample_once())["single"].signal == "no_data"
        c.status, c.load = 503, {"waiting": 100}
        sampler._due.clear()
        held = (await sampler.sample_once())["single"]
        assert (held.desired, held.signal, held.replicas) == (3, "no_data", 0)
        c.status = 200
        # A replica the balancer ejected is not counted either.
        fleet.balancer.states[b.url].healthy = False
        sampler._due.clear()
        assert (await sampler.sample_once())["fleet"].replicas == 1
        # A reload that drops the block drops the advice.
        providers.pop("single")
        sampler._due.clear()
        await sampler.sample_once()
        assert set(sampler.snapshot()) == {"fleet"}
        await fleet.aclose()


# -- the gateway: admin endpoint and gauges ----------------------------------------------------


def test_admin_endpoint_and_metrics(tmp_path, stubs):
    a, b, _ = stubs
    a.status = b.status = 200
    a.load = {"waiting": 9, "queued_prefill_tokens": 0, "kv_usage": 0.1}
    b.load = {"waiting": 4, "queued_prefill_tokens": 0, "kv_usage": 0.1}
    admin = "sk-admin-" + uuid.uuid4().hex
    policy = write_policy(tmp_path, f"""
        targets:
          fleet:
            provider: selfhost
            model: m
            endpoints: [{a.url}, {b.url}]
            autoscale: {{min_replicas: 2, max_replicas: 6, waiting_requests: 2, sample_seconds: 0.2}}
        models:
          m: {{targets: [fleet]}}
        admin_keys: ["sha256:{hash_key(admin)}"]
    """)
    with GatewayProcess(policy) as gw:
        url = gw.root_url + "/admin/autoscale"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"authorization": f"Bearer {gw.dev_key}"}).status_code == 403
        snapshot: dict = {}
        for _ in range(100):  # the balancer's first poll, then a sample (0.2 s apart): bounded wait
            snapshot = httpx.get(url, headers={"authorization": f"Bearer {admin}"}).json()["targets"]
            if snapshot.get("fleet", {}).get("replicas") == 2:
                break
            threading.Event().wait(0.1)
        fleet = snapshot["fleet"]
        # 13 waiting at 2 per replica: 7, capped at 6. Seeded from the first sample with data.
        assert (fleet["desired"], fleet["recommended"], fleet["signal"], fleet["replicas"]) == (6, 6, "max_replicas", 2)
        assert 0 <= fleet["sampled_seconds_ago"] < 5 and fleet["unchanged_for_seconds"] >= fleet["sampled_seconds_ago"]
        metrics = httpx.get(gw.root_url + "/metrics").text
    assert 'gateway_selfhost_desired_replicas{target="fleet"} 6.0' in metrics
    assert 'gateway_selfhost_replicas{target="fleet"} 2.0' in metrics
    assert 'gateway_selfhost_limiting_signal{signal="max_replicas",target="fleet"} 1.0' in metrics
