"""Budgets through real gateway processes on one real Redis, driven by the official SDK."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import openai
import pytest
import redis

from gateway.auth import hash_key
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.redis_servers import Cluster, RedisServer
from tests.stubs.openai_stub import OpenAIStub, StubControl

REDIS_URL = "redis://127.0.0.1:6379/0"
KEY_A, KEY_B, ADMIN = "sk-tenant-a-" + uuid.uuid4().hex, "sk-tenant-b-" + uuid.uuid4().hex, "sk-admin-" + uuid.uuid4().hex
MESSAGES = [{"role": "user", "content": "count me"}]


@pytest.fixture
def prefix():
    value = f"gwtest:{uuid.uuid4().hex[:8]}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=value + "*", count=1000):
        client.delete(key)


@pytest.fixture(scope="module")
def upstream():
    # Deterministic usage: 7 prompt tokens, and `echo: count me` is 3 completion tokens.
    with OpenAIStub(StubControl(usage_prompt_tokens=7)) as stub:
        yield stub


def policy_for(tmp_path, upstream, limits_a: str, extra_target: str = "", targets: str = "[stub]"):
    return write_policy(tmp_path, f"""
        targets:
          stub:
            provider: selfhost
            model: m
            base_url: {upstream.base_url}
            pricing: {{input: 1.0, output: 2.0}}
            timeouts: {{connect: 2, first_token: 5, total: 10}}
        {extra_target}
        models:
          budgeted: {{targets: {targets}, max_tokens: 100}}
        admin_keys: ["sha256:{hash_key(ADMIN)}"]
        tenants:
          team-a:
            keys: ["sha256:{hash_key(KEY_A)}"]
            limits: {limits_a}
          team-b:
            keys: ["sha256:{hash_key(KEY_B)}"]
    """)


def usage_of(gw, tenant: str) -> dict:
    """The tenant's usage once every reservation is settled (settlement follows the reply)."""
    for _ in range(100):
        response = httpx.get(f"{gw.root_url}/admin/tenants/{tenant}/usage", headers={"authorization": f"Bearer {ADMIN}"})
        assert response.status_code == 200, response.text
        document = response.json()
        if all(w["reserved"] == 0 for w in document["windows"].values() if w.get("reserved") is not None):
            return document
        time.sleep(0.05)
    return document


async def _burst(urls: list[str], key: str, n: int, concurrency: int = 200) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int) -> httpx.Response:
            return await client.post(urls[i % len(urls)] + "/chat/completions", headers={"authorization": f"Bearer {key}"},
                                     json={"model": "budgeted", "messages": MESSAGES, "max_tokens": 10})
        return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.stop()


@pytest.mark.parametrize("topology", ["single", "cluster"])
def test_exact_budget_across_two_replicas_on_one_redis(tmp_path, upstream, prefix, topology, request):
    # Estimate per request = prompt estimate (3 + 4 + 2 = 9) + max_tokens 10 = 19 tokens.
    n = 5
    policy = policy_for(tmp_path, upstream, f"{{tokens_per_day: {19 * n}}}")
    upstream.control.requests.clear()
    url = REDIS_URL if topology == "single" else request.getfixturevalue("cluster").url
    with GatewayProcess(policy, redis_url=url, extra_args=["--redis-prefix", prefix]) as gw1, \
         GatewayProcess(policy, redis_url=url, extra_args=["--redis-prefix", prefix]) as gw2:
        responses = asyncio.run(_burst([gw1.base_url, gw2.base_url], KEY_A, 10 * n))
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(ok) + len(refused) == 10 * n
        assert n <= len(ok) < 10 * n, "at least the budget's worth is served, and the budget binds"
        assert all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
        reported = sum(r.json()["usage"]["total_tokens"] for r in ok)
        day = usage_of(gw1, "team-a")["windows"]["tokens_per_day"]
        assert day["spent"] == reported, "spent is exactly what the upstream reported"
        assert day["reserved"] == 0
        assert day["spent"] <= 19 * n
        assert usage_of(gw2, "team-a")["windows"]["tokens_per_day"] == day, "both replicas see one ledger"


def test_concurrency_limit_429_then_sdk_retry_after_succeeds(tmp_path, upstream, prefix):
    policy = policy_for(tmp_path, upstream, "{concurrent_requests: 1, requests_per_minute: 1000}")
    with GatewayProcess(policy, redis_url=REDIS_URL, extra_args=["--redis-prefix", prefix]) as gw:
        upstream.control.delay_seconds = 1.5
        try:
            async def scenario():
                slow = asyncio.create_task(asyncio.to_thread(
                    openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0).chat.completions.create,
                    model="budgeted", messages=MESSAGES))
                await asyncio.sleep(0.5)
                impatient = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0)
                with pytest.raises(openai.RateLimitError) as info:
                    await asyncio.to_thread(impatient.chat.completions.create, model="budgeted", messages=MESSAGES)
                headers = info.value.response.headers
                assert info.value.body["code"] == "rate_limit_exceeded"
                assert int(headers["retry-after"]) >= 1
                assert headers["x-ratelimit-limit-requests"] == "1000"
                patient = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=3)
                result = await asyncio.to_thread(patient.chat.completions.create, model="budgeted", messages=MESSAGES)
                await slow
                return result
            result = asyncio.run(scenario())
            assert result.choices[0].message.content == "echo: count me"
        finally:
            upstream.control.delay_seconds = 0.0


def test_rpm_limit_and_ratelimit_headers_on_every_response(tmp_path, upstream, prefix):
    policy = policy_for(tmp_path, upstream, "{requests_per_minute: 3, tokens_per_minute: 100000}")
    with GatewayProcess(policy, redis_url=REDIS_URL, extra_args=["--redis-prefix", prefix]) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0)
        remaining = []
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(model="budgeted", messages=MESSAGES)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
            assert raw.headers["x-ratelimit-reset-requests"]
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert remaining == [2, 1, 0]
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="budgeted", messages=MESSAGES)
        assert info.value.body["type"] == "requests"
        assert 1 <= int(info.value.response.headers["retry-after"]) <= 60


def test_every_exit_path_settles(tmp_path, upstream, prefix):
    with OpenAIStub(StubControl(usage_prompt_tokens=7)) as backup:
        extra = f"""
          backup:
            provider: selfhost
            model: m2
            base_url: {backup.base_url}
            pricing: {{input: 1.0, output: 2.0}}
        """
        policy = policy_for(tmp_path, upstream, "{tokens_per_month: 1000000}", extra_target=extra, targets="[stub, backup]")
        with GatewayProcess(policy, redis_url=REDIS_URL, extra_args=["--redis-prefix", prefix]) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0)
            # Both targets fail: nothing spent, nothing left reserved.
            upstream.control.fail_always(status=500)
            backup.control.fail_always(status=500)
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="budgeted", messages=MESSAGES)
            month = usage_of(gw, "team-a")["windows"]["tokens_per_month"]
            assert (month["spent"], month["reserved"]) == (0, 0)
            # Failover: spent is the backup's reported usage.
            backup.control.recover()
            done = client.chat.completions.create(model="budgeted", messages=MESSAGES)
            month = usage_of(gw, "team-a")["windows"]["tokens_per_month"]
            assert (month["spent"], month["reserved"]) == (done.usage.total_tokens, 0)
            spent_before = month["spent"]
            # Stream cut mid-way: settle what was delivered (no usage chunk came).
            upstream.control.recover()
            upstream.control.reply = "a b c d e f g h"
            upstream.control.fail_next(1, status=200, cut_after_chunks=3)
            with pytest.raises(openai.APIError):
                for _ in client.chat.completions.create(model="budgeted", messages=MESSAGES, stream=True):
                    pass
            month = usage_of(gw, "team-a")["windows"]["tokens_per_month"]
            assert month["reserved"] == 0
            assert month["spent"] == spent_before + 9 + 3, "prompt estimate + 3 delivered chunks"
            # Client disconnect mid-stream: the reservation is released too.
            upstream.control.reply = " ".join(["w"] * 40)
            upstream.control.delay_seconds = 0.0
            with httpx.stream("POST", gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {KEY_A}"},
                              json={"model": "budgeted", "messages": MESSAGES, "stream": True}) as response:
                next(response.iter_bytes())
            for _ in range(50):
                month = usage_of(gw, "team-a")["windows"]["tokens_per_month"]
                if month["reserved"] == 0:
                    break
                asyncio.run(asyncio.sleep(0.1))
            assert month["reserved"] == 0
            upstream.control.reply = None


def test_tenants_cannot_see_or_spend_each_others_budget(tmp_path, upstream, prefix):
    policy = policy_for(tmp_path, upstream, "{tokens_per_month: 1000}")
    with GatewayProcess(policy, redis_url=REDIS_URL, extra_args=["--redis-prefix", prefix]) as gw:
        openai.OpenAI(base_url=gw.base_url, api_key=KEY_B, max_retries=0).chat.completions.create(
            model="budgeted", messages=MESSAGES)
        mine = httpx.get(gw.base_url + "/usage", headers={"authorization": f"Bearer {KEY_A}"}).json()
        assert mine["tenant"] == "team-a"
        assert mine["windows"]["tokens_per_month"]["spent"] == 0, "B's spend never lands on A"
        theirs = usage_of(gw, "team-b")
        mine_again = httpx.get(gw.base_url + "/usage", headers={"authorization": f"Bearer {KEY_B}"}).json()
        assert theirs["tenant"] == "team-b" and theirs["windows"]["tokens_per_month"]["spent"] > 0
        assert mine_again["windows"] == theirs["windows"], "a caller's view is its own tenant's ledger"
        forbidden = httpx.get(f"{gw.root_url}/admin/tenants/team-b/usage", headers={"authorization": f"Bearer {KEY_A}"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
        assert httpx.get(f"{gw.root_url}/admin/tenants/team-b/usage").status_code == 401
        missing = httpx.get(f"{gw.root_url}/admin/tenants/nobody/usage", headers={"authorization": f"Bearer {ADMIN}"})
        assert missing.status_code == 404


def test_redis_down_fail_closed_is_503_and_not_ready(tmp_path, upstream, prefix):
    policy = policy_for(tmp_path, upstream, "{tokens_per_month: 1000}")
    with GatewayProcess(policy, redis_url="redis://127.0.0.1:1/0") as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="budgeted", messages=MESSAGES)
        assert info.value.status_code == 503 and info.value.body["code"] == "budgets_unavailable"
        assert httpx.get(gw.root_url + "/readyz").status_code == 503
        # Issue 18: the usage view answered 500 while the store was down.
        usage = httpx.get(gw.base_url + "/usage", headers={"authorization": f"Bearer {KEY_A}"})
        assert usage.status_code == 503 and usage.json()["error"]["code"] == "budgets_unavailable"
        assert usage.headers["retry-after"] == "1"


def test_redis_down_fail_open_serves_and_reports_degraded(tmp_path, upstream, prefix):
    policy = policy_for(tmp_path, upstream, "{tokens_per_month: 1000}")
    with GatewayProcess(policy, redis_url="redis://127.0.0.1:1/0", extra_args=["--budgets-fail-mode", "open"]) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0)
        assert client.chat.completions.create(model="budgeted", messages=MESSAGES).choices[0].message.content
        response = httpx.get(gw.root_url + "/readyz")
        ready = response.json()
        assert response.status_code == 200 and ready["ready"] is True, "fail-open stays in rotation"
        assert ready["degraded"] is True and ready["checks"]["budgets"]["degraded"] is True
        assert "local fallback" in ready["checks"]["budgets"]["detail"]


def _burst_report(responses: list[httpx.Response]) -> tuple[list[httpx.Response], list[int]]:
    ok = [r for r in responses if r.status_code == 200]
    return ok, sorted({r.status_code for r in responses})


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_400_request_burst_over_two_replicas_is_exact(tmp_path, upstream, prefix, mode):
    # Issue 13: 400 concurrent requests over two replicas exhausted redis-py's pool: 500s, 503s,
    # a fail-open cascade that lost spend, and reservations left behind.
    budget = 19 * 40
    policy = policy_for(tmp_path, upstream, f"{{tokens_per_day: {budget}, concurrent_requests: 100000}}")
    args = ["--redis-prefix", prefix, "--budgets-fail-mode", mode]
    with GatewayProcess(policy, redis_url=REDIS_URL, extra_args=args) as gw1, \
         GatewayProcess(policy, redis_url=REDIS_URL, extra_args=args) as gw2:
        responses = asyncio.run(_burst([gw1.base_url, gw2.base_url], KEY_A, 400, concurrency=400))
        ok, statuses = _burst_report(responses)
        assert all(s < 500 for s in statuses), statuses
        assert len(ok) >= 40, "at least the budget's worth of estimates is admitted"
        assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} <= {"insufficient_quota"}
        day = usage_of(gw1, "team-a")["windows"]["tokens_per_day"]
        assert day["spent"] == sum(r.json()["usage"]["total_tokens"] for r in ok)
        assert day["spent"] <= budget and day["reserved"] == 0
        assert "degraded" not in usage_of(gw2, "team-a"), "the store never looked down"


def test_hung_store_in_open_mode_answers_fast_quietly_and_replays(tmp_path, upstream):
    # Issue 13: with Redis SIGSTOPped, fail-open served 3 % of normal throughput (p50 1.5 s) and
    # wrote 5.9 MB of log in 50 s; reservations stayed stranded after Redis came back.
    server = RedisServer()
    policy = policy_for(tmp_path, upstream, "{tokens_per_day: 100000}")
    try:
        with GatewayProcess(policy, redis_url=server.url, extra_args=["--budgets-fail-mode", "open"]) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0)
            delivered = sum(client.chat.completions.create(model="budgeted", messages=MESSAGES).usage.total_tokens
                            for _ in range(3))
            lines_before = len(gw.log_path.read_text(errors="replace").splitlines())  # the whole file, not the tail
            server.pause()
            latencies = []
            try:
                for _ in range(6):  # 6 waves of 8 concurrent requests
                    async def wave() -> list[tuple[float, httpx.Response]]:
                        async with httpx.AsyncClient(timeout=20) as http:
                            async def one() -> tuple[float, httpx.Response]:
                                t0 = time.perf_counter()
                                r = await http.post(gw.base_url + "/chat/completions",
                                                    headers={"authorization": f"Bearer {KEY_A}"},
                                                    json={"model": "budgeted", "messages": MESSAGES, "max_tokens": 10})
                                return time.perf_counter() - t0, r
                            return await asyncio.gather(*(one() for _ in range(8)))
                    for seconds, r in asyncio.run(wave()):
                        assert r.status_code == 200, r.text
                        latencies.append(seconds)
                        delivered += r.json()["usage"]["total_tokens"]
            finally:
                server.resume()
            latencies.sort()
            assert latencies[len(latencies) // 2] < 0.25, latencies
            grown = len(gw.log_path.read_text(errors="replace").splitlines()) - lines_before
            assert grown < 100, grown
            for _ in range(100):  # the background probe notices the store, the journal is replayed
                day = usage_of(gw, "team-a")
                if "degraded" not in day and day["windows"]["tokens_per_day"]["spent"] == delivered:
                    break
                time.sleep(0.1)
            w = day["windows"]["tokens_per_day"]
            assert (w["spent"], w["reserved"]) == (delivered, 0), "books == delivered usage"
    finally:
        server.stop()


def test_redis_pool_limit_is_back_pressure_with_retry_after(tmp_path, upstream, prefix):
    # The pool bound is a limit like any other: hit it on purpose (one command in flight, no
    # waiting). The excess gets 503 + Retry-After; the store is never reported down.
    policy = policy_for(tmp_path, upstream, "{tokens_per_day: 1000000, concurrent_requests: 100000}")
    args = ["--redis-prefix", prefix, "--redis-pool-size", "1", "--redis-pool-wait", "0.0001",
            "--budgets-fail-mode", "open"]
    with GatewayProcess(policy, redis_url=REDIS_URL, extra_args=args) as gw:
        responses = asyncio.run(_burst([gw.base_url], KEY_A, 60))
        busy = [r for r in responses if r.status_code == 503]
        assert busy and all(r.status_code in (200, 503) for r in responses), {r.status_code for r in responses}
        assert all(r.headers.get("retry-after") and r.json()["error"]["code"] == "budgets_unavailable" for r in busy)
        ok = [r for r in responses if r.status_code == 200]
        for _ in range(50):  # settles refused by the gate are retried in the background
            day = usage_of(gw, "team-a")["windows"]["tokens_per_day"]
            if day["spent"] == sum(r.json()["usage"]["total_tokens"] for r in ok):
                break
            time.sleep(0.1)
        assert day["spent"] == sum(r.json()["usage"]["total_tokens"] for r in ok) and day["reserved"] == 0
        ready = httpx.get(gw.root_url + "/readyz").json()
        assert ready["checks"]["budgets"]["degraded"] is False, "local back-pressure is not an outage"
