"""Balancer over real HTTP engine stubs on loopback (aiohttp apps in threads) with scriptable
health and load."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from providers.balancer import Balancer, endpoint_root


class EngineStub:
    """`/healthz`, `/readyz`, `/load` and a chat endpoint, each answer scriptable from the test."""

    def __init__(self) -> None:
        self.health = 200
        self.ready = 200
        self.chat = 200
        self.load = {"queued_prefill_tokens": 0, "active_decode_tokens": 0, "waiting": 0, "running": 0, "kv_usage": 0.0}
        self.hits: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def set_load(self, prefill: int, decode: int = 0) -> None:
        self.load = {**self.load, "queued_prefill_tokens": prefill, "active_decode_tokens": decode}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _app(self) -> web.Application:
        async def healthz(_):
            self.hits["healthz"] += 1
            return web.json_response({"status": "ok"}, status=self.health)

        async def readyz(_):
            self.hits["readyz"] += 1
            if self.ready == 404:
                raise web.HTTPNotFound()
            return web.json_response({"status": "ready"}, status=self.ready)

        async def load(_):
            self.hits["load"] += 1
            return web.json_response(self.load)

        async def chat(request):
            self.hits["chat"] += 1
            body = await request.json()
            assert body["max_tokens"] == 1
            return web.json_response({"choices": [{"message": {"content": "p"}}]}, status=self.chat)

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/load", load)
        app.router.add_post("/v1/chat/completions", chat)
        return app

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def boot() -> None:
            self._runner = web.AppRunner(self._app())
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self._started.set()

        self._loop.run_until_complete(boot())
        self._loop.run_forever()

    def __enter__(self) -> "EngineStub":
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        fut.result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def stubs():
    engines = [EngineStub() for _ in range(4)]
    for e in engines:
        e.__enter__()
    yield engines
    for e in engines:
        e.__exit__()


@pytest.fixture
def engines(stubs):
    for e in stubs:
        e.health, e.ready, e.chat = 200, 200, 200
        e.set_load(0, 0)
        e.hits.clear()
    return stubs


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_root():
    assert endpoint_root("http://h:8000/v1") == "http://h:8000"
    assert endpoint_root("http://h:8000/v1/") == "http://h:8000"
    assert endpoint_root("http://h:8000") == "http://h:8000"


async def test_least_load_picks_lighter_endpoint(engines, session):
    a, b, c = engines[:3]
    a.set_load(5000, 1000)
    b.set_load(100, 200)
    c.set_load(3000, 0)
    bal = Balancer([a.url, b.url, c.url], session)
    assert await bal.poll_once() == {a.url: True, b.url: True, c.url: True}
    assert bal.states[a.url].load == 6000 and bal.states[b.url].load == 300
    assert all(e.hits["load"] == 1 for e in (a, b, c))
    assert bal.choose(None, 50) == b.url
    # Local accounting: what we sent since the poll counts until the next poll reports it.
    bal.started(b.url, 4000)
    assert bal.states[b.url].load == 4300 and bal.states[b.url].inflight == 1
    assert bal.choose(None, 50) == c.url
    bal.finished(b.url, 4000)
    assert bal.choose(None, 50) == b.url
    bal.started(b.url, 4000)
    await bal.poll_once()  # the engine's figures now include it
    assert bal.states[b.url].sent_tokens == 0 and bal.states[b.url].load == 300


async def test_prefix_affinity_is_sticky_and_bounded(engines, session):
    for e in engines:
        e.set_load(1000)
    urls = [e.url for e in engines]
    bal = Balancer(urls, session, load_factor=1.25, load_slack=256)
    await bal.poll_once()
    home = bal.choose("tenant-a:sys-prompt-1", 500)
    assert all(bal.choose("tenant-a:sys-prompt-1", 500) == home for _ in range(20))
    order = [s.url for s in bal.preference("tenant-a:sys-prompt-1")]
    assert order[0] == home
    # bound = 1.25 * (sum of loads + 500) / 4 + 256; home may take it while its load + 500 <= bound.
    by_url = {e.url: e for e in engines}
    by_url[home].set_load(7000)  # bound 3537: far over, spill to the prefix's next choice
    await bal.poll_once()
    assert bal.choose("tenant-a:sys-prompt-1", 500) == order[1]
    by_url[home].set_load(1300)  # bound 1756 < 1800: just over
    await bal.poll_once()
    assert bal.choose("tenant-a:sys-prompt-1", 500) == order[1]
    by_url[home].set_load(1200)  # bound 1725 >= 1700: just under, it stays home
    await bal.poll_once()
    assert bal.choose("tenant-a:sys-prompt-1", 500) == home
    # Spill-over is stable too: with home AND the second choice overloaded, the third is taken.
    by_url[home].set_load(9000)
    by_url[order[1]].set_load(9000)
    await bal.poll_once()
    assert bal.choose("tenant-a:sys-prompt-1", 500) == order[2]


async def test_affinity_follows_ejection_and_restore(engines, session):
    urls = [e.url for e in engines]
    bal = Balancer(urls, session, unhealthy_after=3, healthy_after=2)
    key = "conversation-42"
    home = bal.choose(key, 100)
    second = [s.url for s in bal.preference(key)][1]
    stub = next(e for e in engines if e.url == home)
    stub.health = 503
    for i in range(2):
        await bal.poll_once()
        assert bal.states[home].healthy, f"still healthy after {i + 1} failed polls"
        assert bal.choose(key, 100) == home
    await bal.poll_once()
    assert not bal.states[home].healthy and bal.states[home].consecutive_failures == 3
    assert bal.choose(key, 100) == second
    assert all(bal.choose(f"p{i}", 10) != home for i in range(200))
    assert bal.choose(None, 10) != home
    stub.health = 200
    await bal.poll_once()
    assert not bal.states[home].healthy, "one good check is not enough"
    assert bal.choose(key, 100) == second
    await bal.poll_once()
    assert bal.states[home].healthy
    assert bal.choose(key, 100) == home


async def test_readiness_and_unreachable(engines, session):
    a, b = engines[:2]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    a.ready = 503  # alive but not ready: a failed check
    b.ready = 404  # no readiness route: accepted
    bal = Balancer([a.url, b.url, dead], session, check_timeout=1.0)
    for _ in range(3):
        res = await bal.poll_once()
    assert res == {a.url: False, b.url: True, dead: False}
    assert [s.healthy for s in bal.states.values()] == [False, True, False]
    assert all(bal.choose(f"k{i}", 10) == b.url for i in range(50))


async def test_all_unhealthy_falls_back_to_all(engines, session):
    a, b = engines[:2]
    a.health = b.health = 500
    bal = Balancer([a.url, b.url], session, unhealthy_after=1)
    await bal.poll_once()
    assert not any(s.healthy for s in bal.states.values())
    assert {bal.choose(f"k{i}", 10) for i in range(50)} == {a.url, b.url}


async def test_passive_signals(engines, session):
    a, b = engines[:2]
    bal = Balancer([a.url, b.url], session, unhealthy_after=3, healthy_after=2)
    for _ in range(3):
        bal.mark_failure(a.url)
    assert not bal.states[a.url].healthy
    assert {bal.choose(None, 1) for _ in range(10)} == {b.url}
    bal.mark_success(a.url)
    bal.mark_success(a.url)
    assert bal.states[a.url].healthy


async def test_deep_check(engines, session):
    a, b = engines[:2]
    a.chat = 500
    bal = Balancer([a.url, b.url], session, deep_check=True, deep_model="tiny", unhealthy_after=1)
    assert await bal.poll_once() == {a.url: False, b.url: True}
    assert a.hits["chat"] == 1 and b.hits["chat"] == 1


async def test_background_loop_ejects_restores_and_stops(engines, session):
    a, b = engines[:2]
    bal = Balancer([a.url, b.url], session, poll_interval=0.05, unhealthy_after=3, healthy_after=2)
    await bal.start()
    a.health = 503

    async def until(pred, limit=5.0):
        deadline = asyncio.get_running_loop().time() + limit
        while not pred():
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.02)

    await until(lambda: not bal.states[a.url].healthy)
    a.health = 200
    await until(lambda: bal.states[a.url].healthy)
    await bal.stop()
    assert bal._task is None
    polled = a.hits["healthz"]
    await asyncio.sleep(0.2)
    assert a.hits["healthz"] == polled, "no polling after stop()"


async def test_distinct_prefixes_spread_evenly(engines, session):
    bal = Balancer([e.url for e in engines], session)
    counts = Counter(bal.choose(f"prefix-{i}", 100) for i in range(4000))
    assert set(counts) == {e.url for e in engines}
    for n in counts.values():
        assert 800 <= n <= 1200, counts


async def test_removing_an_endpoint_moves_only_its_prefixes(engines, session):
    bal = Balancer([e.url for e in engines], session, unhealthy_after=1)
    before = {f"p{i}": bal.choose(f"p{i}", 10) for i in range(1000)}
    gone = engines[0].url
    bal.mark_failure(gone)
    after = {k: bal.choose(k, 10) for k in before}
    moved = [k for k in before if before[k] != after[k]]
    assert moved and all(before[k] == gone for k in moved)
    assert all(after[k] != gone for k in before)
