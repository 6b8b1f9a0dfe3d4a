"""Circuit breakers and failover in both directions, with real processes on loopback.

Managed upstreams are OpenAI-protocol stubs whose failures the tests script; the self-hosted
side is the bundled engine's real server process, killed mid-load.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import httpx
import openai
import pytest

from gateway.auth import hash_key
from tests.conftest import write_policy
from tests.gateway_proc import ROOT, GatewayProcess
from tests.stubs.openai_stub import OpenAIStub, StubControl, free_port

ADMIN = "sk-admin-" + uuid.uuid4().hex
MESSAGES = [{"role": "user", "content": "keep going"}]
FAST_BREAKERS = "breakers: {min_calls: 4, window_seconds: 20, failure_rate: 0.5, base_cooldown: 1.0, max_cooldown: 4}"


def admin(gw) -> dict:
    return {"authorization": f"Bearer {ADMIN}"}


def breaker_state(gw, key: str) -> str | None:
    snapshot = httpx.get(f"{gw.root_url}/admin/breakers", headers=admin(gw)).json()["breakers"]
    return snapshot.get(key, {}).get("state")


def managed_and_local_policy(tmp_path, managed: OpenAIStub, local_url: str, extra: str = "", timeouts: str = "") -> str:
    return write_policy(tmp_path, f"""
        targets:
          managed:
            provider: openai
            model: gpt-4o
            base_url: {managed.base_url}
            api_key_env: STUB_OPENAI_KEY
            {timeouts}
          local:
            provider: selfhost
            model: tiny-llama
            base_url: {local_url}
        models:
          frontier: {{targets: [managed, local]}}
          fast: {{targets: [local, managed]}}
        retry: {{attempts: 1}}
        {FAST_BREAKERS}
        admin_keys: ["sha256:{hash_key(ADMIN)}"]
        {extra}
    """)


@pytest.mark.parametrize("fault", [
    {"status": 500, "message": "boom"},
    {"status": 429, "message": "slow down", "retry_after": 30},
    {"status": 200, "hang_seconds": 5},
], ids=["5xx", "429", "hang"])
def test_breaker_opens_traffic_fails_over_and_a_probe_closes_it(tmp_path, fault):
    with OpenAIStub(StubControl()) as managed, OpenAIStub(StubControl(reply="from local")) as local:
        policy = managed_and_local_policy(tmp_path, managed, local.base_url,
                                          timeouts="timeouts: {connect: 1, first_token: 0.5, total: 0.5}")
        with GatewayProcess(policy) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)
            managed.control.fail_always(**fault)
            served = []
            for _ in range(10):
                raw = client.chat.completions.with_raw_response.create(model="frontier", messages=MESSAGES)
                served.append(raw.headers["x-gateway-target"])
                assert raw.parse().choices[0].message.content == "from local", "no client-visible error"
            assert served == ["local"] * 10
            for _ in range(20):  # outcomes are recorded in the background
                if breaker_state(gw, "managed") == "open":
                    break
                time.sleep(0.05)
            assert breaker_state(gw, "managed") == "open"
            assert len(managed.control.requests) <= 6, "once open, the failing target is skipped"
            assert raw.headers["x-gateway-fallbacks"] == "managed"
            # Recovery: after the cool-down one half-open probe goes through and closes it.
            managed.control.recover()
            time.sleep(1.3)
            targets = [client.chat.completions.with_raw_response.create(model="frontier", messages=MESSAGES)
                       .headers["x-gateway-target"] for _ in range(3)]
            assert "managed" in targets
            for _ in range(20):
                if breaker_state(gw, "managed") == "closed":
                    break
                time.sleep(0.05)
            assert breaker_state(gw, "managed") == "closed"
            metrics = httpx.get(gw.root_url + "/metrics").text
            assert 'gateway_failovers_total{from_target="managed",to_target="local"}' in metrics


def test_two_replicas_on_one_redis_agree_on_breakers(tmp_path):
    prefix = f"gwtest:{uuid.uuid4().hex[:8]}:"
    with OpenAIStub(StubControl()) as managed, OpenAIStub(StubControl(reply="from local")) as local:
        policy = managed_and_local_policy(tmp_path, managed, local.base_url)
        args = ["--redis-prefix", prefix]
        with GatewayProcess(policy, redis_url="redis://127.0.0.1:6379/0", extra_args=args) as gw1, \
             GatewayProcess(policy, redis_url="redis://127.0.0.1:6379/0", extra_args=args) as gw2:
            managed.control.fail_always(status=503)
            c1 = openai.OpenAI(base_url=gw1.base_url, api_key=gw1.dev_key, max_retries=0)
            for _ in range(8):
                c1.chat.completions.create(model="frontier", messages=MESSAGES)
            time.sleep(0.3)
            assert breaker_state(gw2, "managed") == "open", "replica 2 sees what replica 1 opened"
            before = len(managed.control.requests)
            c2 = openai.OpenAI(base_url=gw2.base_url, api_key=gw2.dev_key, max_retries=0)
            raw = c2.chat.completions.with_raw_response.create(model="frontier", messages=MESSAGES)
            assert raw.headers["x-gateway-target"] == "local"
            assert len(managed.control.requests) == before, "replica 2 skipped the open target"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from selfhost_engine.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


class EngineProcess:
    def __init__(self, model_dir) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selfhost_engine", "serve", "--model", str(model_dir), "--port", str(self.port),
             "--max-num-seqs", "8", "--threads", "1"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("engine did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def test_self_hosted_killed_mid_load_fails_over_to_managed(tmp_path, tiny_model):
    engine = EngineProcess(tiny_model)
    try:
        with OpenAIStub(StubControl(reply="from managed")) as managed:
            policy = managed_and_local_policy(tmp_path, managed, engine.base_url)
            with GatewayProcess(policy) as gw:
                client = openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)
                first = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES, max_tokens=4)
                assert first.headers["x-gateway-target"] == "local"

                async def scenario():
                    async_client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)
                    streams = [await async_client.chat.completions.create(
                        model="fast", messages=MESSAGES, stream=True, max_tokens=4000,
                        extra_body={"ignore_eos": True}) for _ in range(3)]
                    for stream in streams:  # every stream has started
                        await anext(stream)
                    engine.kill()
                    outcomes = []
                    for stream in streams:
                        try:
                            async for _ in stream:
                                pass
                            outcomes.append("completed")
                        except openai.APIError as exc:
                            outcomes.append("error event" if "local" in str(exc.message) else f"other: {exc}")
                    # Not started yet: fails over before the first byte, invisibly.
                    late = await async_client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
                    text = "".join([c.choices[0].delta.content or "" async for c in late if c.choices])
                    return outcomes, text

                outcomes, text = asyncio.run(scenario())
                assert outcomes == ["error event"] * 3, "cut streams end with an explicit error, never silently"
                assert text == "from managed"
                raw = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
                assert raw.headers["x-gateway-target"] == "managed" and raw.headers["x-gateway-fallbacks"] == "local"
                # Both down: 503 with a reason per target.
                managed.control.fail_always(status=500, message="managed is down too")
                with pytest.raises(openai.InternalServerError) as info:
                    client.chat.completions.create(model="fast", messages=MESSAGES)
                assert info.value.status_code == 503
                reasons = {d["target"]: d for d in info.value.body["details"]}
                assert set(reasons) == {"local", "managed"}
                assert reasons["managed"]["upstream_status"] == 500 or "breaker" in reasons["managed"]["message"]
    finally:
        engine.kill()


def test_replica_affinity_load_and_ejection(tmp_path):
    with OpenAIStub(StubControl(reply="a")) as a, OpenAIStub(StubControl(reply="b")) as b:
        policy = write_policy(tmp_path, f"""
            targets:
              fleet:
                provider: selfhost
                model: m
                endpoints: [{a.base_url}, {b.base_url}]
            models:
              fleet: {{targets: [fleet]}}
            balancing: {{poll_interval: 0.2, unhealthy_after: 3, healthy_after: 2}}
            admin_keys: ["sha256:{hash_key(ADMIN)}"]
        """)
        with GatewayProcess(policy) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)

            def answer(system: str) -> str:
                messages = [{"role": "system", "content": system}, {"role": "user", "content": "q"}]
                return client.chat.completions.create(model="fleet", messages=messages).choices[0].message.content

            time.sleep(0.5)  # first health polls
            prompts = [f"You are assistant number {i}. " * 20 for i in range(24)]
            homes = {p: answer(p) for p in prompts}
            assert all(answer(p) == homes[p] for p in prompts for _ in range(2)), "a prefix stays on its replica"
            spread = Counter(homes.values())
            assert spread["a"] >= 4 and spread["b"] >= 4, spread
            on_a = [p for p in prompts if homes[p] == "a"]
            a.control.healthy = False
            time.sleep(1.2)  # three failed polls eject it
            assert all(answer(p) == "b" for p in on_a), "an ejected replica's prefixes move"
            a.control.healthy = True
            time.sleep(1.0)
            assert all(answer(p) == "a" for p in on_a), "and come back once it is restored"
            # Token-aware least load for requests without a shared prefix.
            b.control.load = {**b.control.load, "queued_prefill_tokens": 50_000, "active_decode_tokens": 20_000}
            time.sleep(0.5)
            no_prefix = Counter(client.chat.completions.create(model="fleet", messages=[{"role": "user", "content": "x"}])
                                .choices[0].message.content for _ in range(10))
            assert no_prefix["a"] >= 8, no_prefix
