"""Routing: rules, canary weights, difficulty, `auto`, hot reload — through real gateway processes."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from gateway.auth import Principal, hash_key
from gateway.router import Router
from protocols.api import Api
from policies.loader import load_policy, parse_policy
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.openai_stub import OpenAIStub, StubControl

ROOT = Path(__file__).resolve().parent.parent
ACME, BATCH, OTHER, ADMIN = (f"sk-{n}-{uuid.uuid4().hex}" for n in ("acme", "batch", "other", "admin"))
EASY = [{"role": "user", "content": "hi, thanks!"}]
HARD = [{"role": "user", "content": (
    "Prove step by step that the sum of the first n odd numbers is n^2, then design a distributed "
    "algorithm in Python that verifies it for n up to 10^9, explain why it is correct, and analyze "
    "its complexity. You must use exactly three functions.\n```python\ndef f(n):\n    return n*n\n```")}]


def routing_policy(base_urls: dict[str, str]) -> str:
    targets = "\n".join(
        f"  {name}: {{provider: selfhost, model: {name}-model, base_url: \"{url}\"}}" for name, url in base_urls.items()
    )
    return f"""
version: 2
targets:
{targets}
models:
  frontier: {{targets: [frontier, managed, local]}}
  fast: {{targets: [local, managed]}}
default_model: fast
routes:
  - name: batch-stays-local
    match: {{tiers: [batch], models: [frontier, auto]}}
    targets: [{{target: local}}]
  - name: acme-canary
    match: {{tenants: [acme], models: [frontier]}}
    targets: [{{target: frontier, weight: 80}}, {{target: canary, weight: 20}}]
    fallbacks: [managed]
  - name: auto-easy
    match: {{models: [auto], difficulty: {{max: 0.35}}}}
    targets: [{{target: local}}]
    fallbacks: [managed]
  - name: auto-hard
    match: {{models: [auto], difficulty: {{min: 0.35}}}}
    targets: [{{target: frontier}}]
    fallbacks: [managed, local]
  - name: tagged
    match: {{metadata: {{suite: eval}}}}
    targets: [{{target: managed}}]
  - name: tagged-user
    match: {{metadata: {{user_id: eval-bot}}}}
    targets: [{{target: managed}}]
admin_keys: ["sha256:{hash_key(ADMIN)}"]
tenants:
  acme: {{keys: ["sha256:{hash_key(ACME)}"]}}
  nightly: {{tier: batch, keys: ["sha256:{hash_key(BATCH)}"]}}
  other: {{keys: ["sha256:{hash_key(OTHER)}"]}}
"""


@pytest.fixture(scope="module")
def upstreams():
    stubs = {name: OpenAIStub(StubControl(reply=f"from {name}")).start() for name in ("frontier", "canary", "managed", "local")}
    yield stubs
    for stub in stubs.values():
        stub.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstreams):
    path = write_policy(tmp_path_factory.mktemp("routing"), routing_policy({n: s.base_url for n, s in upstreams.items()}))
    with GatewayProcess(path) as proc:
        proc.policy_path = path
        yield proc


def call(gw, key, model, messages=EASY, **kwargs):
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    return client.chat.completions.with_raw_response.create(model=model, messages=messages, **kwargs)


class Upstream:
    """Stands for any target: the router only reads which protocols it speaks (it never calls)."""

    apis = frozenset(Api)


def test_shipped_routing_example_routes_as_documented():
    policy = load_policy(ROOT / "policies" / "examples" / "routing.yaml")
    router = Router(policy, {name: Upstream() for name in policy.targets}, rng=random.Random(1))
    acme = Principal("acme", policy.tenants["acme"], "")
    batch = Principal("nightly-batch", policy.tenants["nightly-batch"], "")

    def plan(principal, model, messages=EASY, headers=None):
        return asyncio.run(router.plan(model, principal, {"messages": messages}, headers or {}, 10))

    assert [c.name for c in plan(batch, "frontier").candidates] == ["local-fleet", "gpt-4o-mini"]
    assert plan(acme, "frontier").route_name == "acme-canary"
    assert [c.name for c in plan(acme, "auto").candidates] == ["local-fleet", "gpt-4o-mini"]
    hard = plan(acme, "auto", HARD)
    assert hard.route_name == "auto-hard" and hard.candidates[0].name == "claude-sonnet"
    assert hard.candidates[0].timeouts.first_token == 20
    assert plan(acme, "fast", headers={"x-eval-run": "true"}).route_name == "eval-traffic"
    assert [c.name for c in plan(acme, "fast").candidates] == ["local-fleet", "gpt-4o-mini"], "no route: model's list"


def test_canary_weights_converge_to_their_ratio():
    policy = parse_policy(routing_policy({n: "http://127.0.0.1:1/v1" for n in ("frontier", "canary", "managed", "local")}))
    router = Router(policy, {name: Upstream() for name in policy.targets}, rng=random.Random(7))
    acme = Principal("acme", policy.tenants["acme"], "")
    picks = Counter(asyncio.run(router.plan("frontier", acme, {"messages": EASY}, {}, 5)).candidates[0].name
                    for _ in range(4000))
    assert abs(picks["canary"] / 4000 - 0.20) < 0.03
    assert set(picks) == {"frontier", "canary"}


def test_rules_route_through_the_gateway(gw, upstreams):
    assert call(gw, BATCH, "frontier").headers["x-gateway-target"] == "local"
    assert call(gw, BATCH, "frontier").headers["x-gateway-route"] == "batch-stays-local"
    assert call(gw, OTHER, "frontier").headers["x-gateway-target"] == "frontier"
    assert "x-gateway-route" not in call(gw, OTHER, "frontier").headers
    assert call(gw, OTHER, "fast", metadata={"suite": "eval"}).headers["x-gateway-target"] == "managed"
    # the same rules for the other protocols' metadata (Responses: any keys; Messages: user_id)
    responses = openai.OpenAI(base_url=gw.base_url, api_key=OTHER, max_retries=0).responses
    assert responses.with_raw_response.create(model="fast", input="hi", metadata={"suite": "eval"}).headers[
        "x-gateway-target"] == "managed"
    assert responses.with_raw_response.create(model="fast", input="hi").headers["x-gateway-target"] == "local"
    messages = anthropic.Anthropic(base_url=gw.base_url.removesuffix("/v1"), api_key=OTHER, max_retries=0).messages
    tagged = messages.with_raw_response.create(model="fast", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
                                               metadata={"user_id": "eval-bot"})
    assert tagged.headers["x-gateway-target"] == "managed" and tagged.headers["x-gateway-route"] == "tagged-user"
    plain = messages.with_raw_response.create(model="fast", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
                                              metadata={"user_id": "someone"})
    assert plain.headers["x-gateway-target"] == "local"
    targets = Counter(call(gw, ACME, "frontier").headers["x-gateway-target"] for _ in range(200))
    assert set(targets) == {"frontier", "canary"} and 20 <= targets["canary"] <= 65


def test_auto_sends_easy_to_self_hosted_and_hard_to_frontier(gw, upstreams):
    easy = call(gw, OTHER, "auto", EASY)
    assert easy.headers["x-gateway-target"] == "local" and easy.headers["x-gateway-route"] == "auto-easy"
    hard = call(gw, OTHER, "auto", HARD)
    assert hard.headers["x-gateway-target"] == "frontier" and hard.headers["x-gateway-route"] == "auto-hard"
    score = float(hard.headers["x-gateway-difficulty"].split(";")[0])
    assert score >= 0.35 > float(easy.headers["x-gateway-difficulty"].split(";")[0])
    assert "math=" in hard.headers["x-gateway-difficulty"], "the header explains the score"
    assert upstreams["frontier"].control.requests[-1]["model"] == "frontier-model"


def test_invalid_edit_keeps_serving_and_reload_reports_file_line(gw, upstreams):
    path: Path = gw.policy_path
    good = path.read_text()
    admin = {"authorization": f"Bearer {ADMIN}"}
    try:
        path.write_text(good.replace("targets: [{target: managed}]", "targets: [{target: nowhere}]"))
        response = httpx.post(f"{gw.root_url}/admin/policies/reload", headers=admin)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid_policy"
        assert error["details"]["line"] == good.splitlines().index("  - name: tagged") + 3
        assert f"{path}:" in error["message"] and "unknown target 'nowhere'" in error["message"]
        assert call(gw, OTHER, "fast", metadata={"suite": "eval"}).headers["x-gateway-target"] == "managed"
        ready = httpx.get(gw.root_url + "/readyz").json()
        assert "last reload rejected" in ready["checks"]["policy"]["detail"]
        forbidden = httpx.post(f"{gw.root_url}/admin/policies/reload", headers={"authorization": f"Bearer {OTHER}"})
        assert forbidden.status_code == 403
    finally:
        path.write_text(good)
        httpx.post(f"{gw.root_url}/admin/policies/reload", headers=admin)


def test_hot_reload_under_load_drops_no_request(gw, upstreams):
    path: Path = gw.policy_path
    good = path.read_text()
    swapped = good.replace("match: {metadata: {suite: eval}}\n    targets: [{target: managed}]",
                           "match: {metadata: {suite: eval}}\n    targets: [{target: canary}]")
    assert swapped != good

    async def load(stop: asyncio.Event) -> Counter:
        statuses: Counter = Counter()
        async with httpx.AsyncClient(timeout=20) as client:
            async def worker():
                while not stop.is_set():
                    response = await client.post(gw.base_url + "/chat/completions",
                                                 headers={"authorization": f"Bearer {OTHER}"},
                                                 json={"model": "fast", "messages": EASY, "metadata": {"suite": "eval"}})
                    statuses[(response.status_code, response.headers.get("x-gateway-target"))] += 1
            await asyncio.gather(*(worker() for _ in range(8)))
        return statuses

    async def scenario() -> Counter:
        stop = asyncio.Event()
        task = asyncio.create_task(load(stop))
        for text in (swapped, good.replace("version: 2", "version: [broken"), swapped, good):
            path.write_text(text)
            await asyncio.sleep(1.6)  # the watcher polls every second
        stop.set()
        return await task

    try:
        statuses = asyncio.run(scenario())
    finally:
        path.write_text(good)
    assert all(status == 200 for status, _ in statuses), statuses
    assert sum(statuses.values()) > 50
    assert {target for _, target in statuses} == {"managed", "canary"}, "both policies served, nothing else"
