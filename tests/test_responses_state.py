"""Stored responses: the TTL from the policy, and state shared by two gateway replicas through the
real Redis (what one replica stored, the other retrieves and continues; tenants stay apart)."""

from __future__ import annotations

import asyncio
import uuid

import openai
import pytest

from cache.store import MemoryStore
from gateway.auth import hash_key
from gateway.responses_store import ResponseStore
from protocols.errors import GatewayError
from protocols.openai_responses import WIRE
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stored_responses_expire_after_the_policy_ttl():
    clock = Clock()
    sessions = ResponseStore(MemoryStore(clock=clock), ttl=lambda: 60.0)
    answer = b'{"id": "resp_1", "object": "response", "output": [{"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}]}'

    async def scenario() -> None:
        first = WIRE.decode(b'{"model": "m", "input": "hello"}')
        await sessions.remember(first, "t", answer)
        follow = await sessions.resolve(WIRE.decode(b'{"model": "m", "input": "more", "previous_response_id": "resp_1"}'), "t")
        assert [i.get("role") for i in follow.body["input"]] == ["user", "assistant", "user"]
        assert "previous_response_id" not in follow.body and follow.messages == 3
        page = await sessions.input_items("t", "resp_1", order="asc", limit=1)
        assert page["has_more"] is False and page["data"][0]["content"] == [{"type": "input_text", "text": "hello"}]
        with pytest.raises(GatewayError) as caught:  # the same id in another tenant does not exist
            await sessions.load("u", "resp_1")
        assert caught.value.status == 404
        clock.now += 61
        with pytest.raises(GatewayError) as caught:
            await sessions.resolve(WIRE.decode(b'{"model": "m", "input": "x", "previous_response_id": "resp_1"}'), "t")
        assert caught.value.status == 404 and caught.value.param == "previous_response_id"
        with pytest.raises(GatewayError):  # the output items expire with their response
            await sessions.resolve(WIRE.decode(b'{"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}'), "t")

    asyncio.run(scenario())


OTHER = "sk-other-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, _module_stub):
    policy = write_policy(tmp_path_factory.mktemp("responses-redis"), f"""
        targets:
          stub-openai:
            provider: openai
            model: gpt-4o-mini
            base_url: {_module_stub.base_url}
            api_key_env: STUB_OPENAI_KEY
        models:
          gpt-test: {{targets: [stub-openai]}}
        tenants:
          other: {{keys: ["sha256:{hash_key(OTHER)}"]}}
    """)
    prefix = ["--redis-prefix", f"gwtest:responses:{uuid.uuid4().hex[:8]}:"]
    procs = [GatewayProcess(policy, redis_url="redis://127.0.0.1:6379/0", extra_args=prefix) for _ in range(2)]
    try:
        yield [p.wait_ready() for p in procs]
    finally:
        for p in procs:
            p.stop()


def test_two_replicas_share_stored_responses_through_redis(replicas, openai_stub):
    one, two = (openai.OpenAI(base_url=p.base_url, api_key=p.dev_key, max_retries=0) for p in replicas)
    first = one.responses.create(model="gpt-test", input="remember kiwi", max_output_tokens=20)
    assert two.responses.retrieve(first.id).output_text == "echo: remember kiwi"
    second = two.responses.create(model="gpt-test", previous_response_id=first.id, input="and pears",
                                  max_output_tokens=20)
    assert [i["content"] if isinstance(i["content"], str) else i["content"][0]["text"]
            for i in openai_stub.control.requests[-1]["input"]] == ["remember kiwi", "echo: remember kiwi", "and pears"]
    assert [i.type for i in one.responses.input_items.list(second.id).data] == ["message"] * 3
    other = openai.OpenAI(base_url=replicas[1].base_url, api_key=OTHER, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    one.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        two.responses.retrieve(first.id)


def test_a_store_outage_is_a_503_not_a_404():
    """A stored response that cannot be read because Redis is down must not read as 'no such id'."""
    import redis.asyncio as aioredis

    from cache.store import RedisStore
    from tests.redis_servers import RedisServer

    server = RedisServer()
    answer = b'{"id": "resp_9", "object": "response", "output": []}'

    async def scenario() -> None:
        client = aioredis.Redis.from_url(server.url, socket_timeout=0.5)
        sessions = ResponseStore(RedisStore(client, prefix="t:"), ttl=lambda: 60.0)
        await sessions.remember(WIRE.decode(b'{"model": "m", "input": "hello"}'), "t", answer)
        assert (await sessions.load("t", "resp_9"))["response"]["id"] == "resp_9"
        with pytest.raises(GatewayError) as caught:
            await sessions.load("t", "resp_unknown")
        assert caught.value.status == 404
        server.stop()
        with pytest.raises(GatewayError) as caught:
            await sessions.load("t", "resp_9")
        assert caught.value.status == 503 and caught.value.headers["retry-after"] == "1"
        await client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
