"""`POST /v1/feedback` and the routing decision store: authenticated, tenant-scoped, bounded in size
and time, in memory and in (real) Redis, and exported as training rows."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import numpy as np
import openai
import pytest
import redis.asyncio as aioredis
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.auth import hash_key
from gateway.routing.decisions import MemoryDecisionStore, RedisDecisionStore, decision_row, record_decision, training_rows
from gateway.routing.scorer import Difficulty
from gateway.routing.train import rows_from_feedback
from gateway.settings import Settings
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess

ALPHA, BETA, ADMIN = (f"sk-{n}-{uuid.uuid4().hex}" for n in ("alpha", "beta", "admin"))


def _difficulty(score: float = 0.8) -> Difficulty:
    vec = np.linspace(-1, 1, 384, dtype=np.float32)
    return Difficulty(score, {"text": 1.0}, kind="learned@test", hard=score > 0.5,
                      shadow=Difficulty(0.3, {}), model_input={"embedding": vec, "features": {"code": 0.5}})


def _row(tenant: str, request_id: str, ts: float | None = None) -> dict:
    return decision_row(request_id=request_id, tenant=tenant, difficulty=_difficulty(), route="auto>hard",
                        target="big", prompt_tokens=12, completion_tokens=30, cost_usd=0.0012, now=ts)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    path = write_policy(tmp_path_factory.mktemp("feedback"), f"""
        targets:
          up: {{provider: openai, model: m, base_url: "http://127.0.0.1:9/v1", api_key_env: STUB_OPENAI_KEY}}
        models:
          m: {{targets: [up]}}
        admin_keys: ["sha256:{hash_key(ADMIN)}"]
        tenants:
          alpha: {{keys: ["sha256:{hash_key(ALPHA)}"]}}
          beta: {{keys: ["sha256:{hash_key(BETA)}"]}}
    """)
    app = create_app(Settings(policy_path=str(path), cache_dir=str(tmp_path_factory.mktemp("cache")),
                              watch_policy=False))
    with TestClient(app) as test_client:
        yield test_client


def post(client, key, body) -> object:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/v1/feedback", content=data, headers={**headers, "content-type": "application/json"})


def test_feedback_is_authenticated_and_tenant_scoped(client):
    store = client.app.state.decisions
    rid = f"req-{uuid.uuid4().hex}"
    asyncio.run(store.record(_row("alpha", rid)))
    assert post(client, None, {"request_id": rid, "label": "hard"}).status_code == 401
    assert post(client, "sk-wrong", {"request_id": rid, "label": "hard"}).status_code == 401
    foreign = post(client, BETA, {"request_id": rid, "label": "easy"})
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "request_not_found"
    ok = post(client, ALPHA, {"request_id": rid, "score": 0.9, "comment": "the cheap answer was wrong"})
    assert ok.status_code == 200 and ok.json() == {"object": "feedback", "request_id": rid, "status": "recorded"}
    assert post(client, ALPHA, {"request_id": "req-unknown", "label": "hard"}).status_code == 404
    rows = asyncio.run(store.export("alpha"))
    mine = [r for r in rows if r["request_id"] == rid]
    assert mine[0]["feedback"] == {"label": None, "score": 0.9, "comment": "the cheap answer was wrong"}
    assert not [r for r in asyncio.run(store.export("beta")) if r["request_id"] == rid]


@pytest.mark.parametrize(("body", "status"), [
    ({"request_id": "r", "label": "hard", "score": 0.2}, 400),  # both
    ({"request_id": "r"}, 400),  # neither
    ({"request_id": "r", "score": 1.5}, 400),
    ({"request_id": "r", "label": "medium"}, 400),
    ({"request_id": "", "label": "hard"}, 400),
    ({"request_id": "r", "label": "hard", "extra": 1}, 400),
    ({"request_id": "r", "label": "hard", "comment": "x" * 2001}, 400),
    ("{not json", 400),
    (json.dumps({"request_id": "r", "label": "hard", "comment": "y" * 20000}), 413),
])
def test_bad_feedback_gets_a_clear_error(client, body, status):
    response = post(client, ALPHA, body)
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_admin_export_gives_training_rows(client):
    rid = f"req-{uuid.uuid4().hex}"
    asyncio.run(client.app.state.decisions.record(_row("beta", rid)))  # memory store: no loop affinity
    assert post(client, BETA, {"request_id": rid, "label": "easy"}).status_code == 200
    assert client.get("/admin/router/export", headers={"authorization": f"Bearer {BETA}"}).status_code == 403
    response = client.get("/admin/router/export", params={"tenant": "beta"},
                          headers={"authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in response.text.splitlines()]
    row = next(r for r in rows if r["request_id"] == rid)
    assert row["score"] == 0.8 and row["shadow_score"] == 0.3 and row["scorer"] == "learned@test"
    assert row["cost_usd"] == 0.0012 and row["target"] == "big" and len(row["embedding"]) == 384
    train = rows_from_feedback(training_rows(rows), embed=lambda texts: np.zeros((len(texts), 384)))
    assert train[-1].y == 0.0 and train[-1].raw["code"] == 0.5


async def test_memory_store_is_bounded_in_size_and_time():
    now = [1000.0]
    store = MemoryDecisionStore(max_entries=3, ttl=60, clock=lambda: now[0])
    for i in range(5):
        await store.record(_row("t", f"r{i}", ts=now[0]))
    assert len(store) == 3 and not await store.add_feedback("t", "r0", {"label": "hard"})
    assert await store.add_feedback("t", "r4", {"label": "hard"})
    now[0] += 61
    assert not await store.add_feedback("t", "r4", {"label": "easy"}) and len(store) == 0
    with pytest.raises(ValueError):
        MemoryDecisionStore(max_entries=0)


async def test_record_decision_never_raises():
    class Broken:
        async def record(self, row):
            raise ConnectionError("store down")

    await record_decision(Broken(), request_id="r", tenant="t", difficulty=None, route=None, target=None,
                          prompt_tokens=0, completion_tokens=0, cost_usd=0.0)
    await record_decision(None, request_id="r", tenant="t", difficulty=None, route=None, target=None,
                          prompt_tokens=0, completion_tokens=0, cost_usd=0.0)


async def test_redis_store_isolates_tenants_and_trims():
    client = aioredis.Redis(host="127.0.0.1", port=6379)
    prefix = f"test-{uuid.uuid4().hex}:"
    store = RedisDecisionStore(client, prefix=prefix, max_entries=3, ttl=30)
    try:
        for i in range(4):
            await store.record(_row("alpha", f"r{i}", ts=1_000_000.0 + i))
        await store.record(_row("beta", "b0", ts=1_000_010.0))
        assert await client.zcard(f"{prefix}router:index") == 3
        assert not await store.add_feedback("alpha", "r0", {"label": "hard"}), "trimmed"
        assert not await store.add_feedback("beta", "r3", {"label": "hard"}), "another tenant's decision"
        assert await store.add_feedback("alpha", "r3", {"label": "hard"})
        assert 0 < await client.pttl(f"{prefix}router:d:alpha:r3") <= 30_000
        rows = await store.export("alpha")
        assert [r["request_id"] for r in rows] == ["r3"] and rows[0]["feedback"]["label"] == "hard"
        assert len(rows[0]["embedding"]) == 384
        assert {r["request_id"] for r in await store.export(labelled_only=False)} == {"r2", "r3", "b0"}
    finally:
        keys = [k async for k in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def test_feedback_end_to_end_through_a_gateway(tmp_path, _module_stub):
    """A real gateway process: an `auto` request is scored and recorded; its tenant labels it over
    HTTP (another tenant cannot); the admin export carries the label and the model input."""
    path = write_policy(tmp_path, f"""
        targets:
          up: {{provider: openai, model: gpt-4o-mini, base_url: "{_module_stub.base_url}", api_key_env: STUB_OPENAI_KEY}}
        models:
          m: {{targets: [up]}}
        default_model: m
        admin_keys: ["sha256:{hash_key(ADMIN)}"]
        tenants:
          alpha: {{keys: ["sha256:{hash_key(ALPHA)}"]}}
          beta: {{keys: ["sha256:{hash_key(BETA)}"]}}
    """)
    with GatewayProcess(path) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=ALPHA, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Prove that sqrt(2) is irrational."}])
        rid = raw.headers["x-request-id"]
        assert raw.headers["x-gateway-difficulty"].split("; ")[1].startswith("learned@")

        def feedback(key: str):
            return httpx.post(gw.base_url + "/feedback", json={"request_id": rid, "label": "hard"},
                              headers={"authorization": f"Bearer {key}"}, timeout=5)

        status = 404
        for _ in range(50):  # the decision is recorded just after the reply
            status = feedback(ALPHA).status_code
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200
        assert feedback(BETA).status_code == 404
        export = httpx.get(gw.root_url + "/admin/router/export", params={"tenant": "alpha"},
                           headers={"authorization": f"Bearer {ADMIN}"}, timeout=5)
        row = next(json.loads(line) for line in export.text.splitlines() if rid in line)
        assert row["feedback"]["label"] == "hard" and row["scorer"].startswith("learned@")
        assert len(row["embedding"]) == 768 and "chars" in row["features"]  # static + contextual MiniLM
