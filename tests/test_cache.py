"""Response cache, semantic cache, stores and prefix fingerprints.

Real Redis (127.0.0.1:6379, a unique key prefix per test, cleaned up afterwards) and the real
offline MiniLM model (loaded once per module).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import time
import uuid

import httpx
import pytest
import redis.asyncio as aioredis
from openai import AsyncOpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from cache.prefix import prefix_fingerprint, prompt_cache_key
from cache.response import CacheStatus, ResponseCache, canonical_json, savings
from protocols.openai_chat import replay_chunks
from cache.store import MemoryStore, RedisStore, Store
from policies.schema import CacheSpec, Pricing, SemanticCacheSpec
from providers.base import Usage

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

# ----------------------------------------------------------------------------- fixtures


def body(question: str = "What is the capital of France?", *, system: str | None = "Answer briefly.", **extra) -> dict:
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": question})
    out = {"model": "chat", "messages": messages, "temperature": 0}
    out.update(extra)
    return out


def completion(content: str | None = "Paris.", *, tool_calls=None, usage=(12, 3), id="chatcmpl-abc123") -> bytes:
    message: dict = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    doc = {
        "id": id,
        "object": "chat.completion",
        "created": 1_790_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0123",
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls" if tool_calls else "stop"}
        ],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }
    return json.dumps(doc).encode()


@pytest.fixture
async def redis_client():
    client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_store(redis_client):
    prefix = f"gwtest:{uuid.uuid4().hex}:"
    store = RedisStore(redis_client, prefix=prefix, backoff=0.0)
    yield store
    keys = [k async for k in redis_client.scan_iter(match=prefix + "*")]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture(params=["memory", "redis"])
def store(request) -> Store:
    if request.param == "memory":
        return MemoryStore(max_entries=1000, max_bytes=16 * 1024 * 1024)
    return request.getfixturevalue("redis_store")


@pytest.fixture(scope="module")
def embedder():
    from cache.embedder import Embedder

    e = Embedder()
    e.load()
    return e


def dead_redis_store(**kw) -> RedisStore:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    return RedisStore(client, prefix="gwtest:dead:", owns_client=True, **kw)


# ----------------------------------------------------------------------------- keys


def test_key_is_in_tenant_namespace_and_differs_per_tenant():
    rc = ResponseCache(MemoryStore())
    a, b = rc.cache_key("acme", "chat", body()), rc.cache_key("globex", "chat", body())
    assert a is not None and b is not None
    assert a.startswith("t:acme:r:") and b.startswith("t:globex:r:")
    assert a != b
    # tenant names that look like prefixes of each other still never collide
    assert rc.cache_key("a:r", "chat", body()) != rc.cache_key("a", "chat", body())


async def test_tenant_isolation_exact(store):
    rc = ResponseCache(store)
    ka = rc.cache_key("acme", "chat", body())
    kb = rc.cache_key("globex", "chat", body())
    assert await rc.store(ka, completion("acme's answer"), Usage(12, 3), 60, 10_000)
    assert (await rc.lookup(ka)) is not None
    assert await rc.lookup(kb) is None


def test_field_order_and_number_spelling_do_not_matter():
    rc = ResponseCache(MemoryStore())
    b1 = body(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}])
    b2 = {k: copy.deepcopy(b1[k]) for k in reversed(list(b1))}
    b2["tools"][0]["function"] = dict(reversed(list(b2["tools"][0]["function"].items())))
    b2["messages"] = [dict(reversed(list(m.items()))) for m in b2["messages"]]
    b2["temperature"] = 0.0
    assert list(b1) != list(b2)
    assert rc.cache_key("t", "chat", b1) == rc.cache_key("t", "chat", b2)
    assert canonical_json({"b": 1, "a": [1.0, {"d": 2, "c": 3}]}) == b'{"a":[1,{"c":3,"d":2}],"b":1}'


def test_delivery_fields_and_defaults_do_not_change_key():
    rc = ResponseCache(MemoryStore())
    k = rc.cache_key("t", "chat", body())
    assert rc.cache_key("t", "chat", body(stream=True, stream_options={"include_usage": True})) == k
    assert rc.cache_key("t", "chat", body(n=1)) == k
    assert rc.cache_key("t", "chat", body(seed=None)) == k


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}

CHANGES = {
    "question": lambda b: b["messages"][-1].update(content="What is the capital of Spain?"),
    "system": lambda b: b["messages"][0].update(content="Answer at length."),
    "role": lambda b: b["messages"][0].update(role="developer"),
    "name": lambda b: b["messages"][-1].update(name="bob"),
    "extra_turn": lambda b: b["messages"].insert(1, {"role": "assistant", "content": "Hi"}),
    "model": lambda b: b.update(model="chat-large"),
    "tools": lambda b: b.update(tools=[TOOL]),
    "tool_choice": lambda b: b.update(tool_choice="none"),
    "parallel_tool_calls": lambda b: b.update(parallel_tool_calls=False),
    "top_p": lambda b: b.update(top_p=0.5),
    "max_tokens": lambda b: b.update(max_tokens=10),
    "max_completion_tokens": lambda b: b.update(max_completion_tokens=10),
    "stop": lambda b: b.update(stop=["\n"]),
    "seed": lambda b: b.update(seed=7),
    "response_format": lambda b: b.update(response_format={"type": "json_object"}),
    "logprobs": lambda b: b.update(logprobs=True, top_logprobs=2),
    "presence_penalty": lambda b: b.update(presence_penalty=0.5),
    "frequency_penalty": lambda b: b.update(frequency_penalty=0.5),
    "logit_bias": lambda b: b.update(logit_bias={"50256": -100}),
    "reasoning_effort": lambda b: b.update(reasoning_effort="high"),
    "user": lambda b: b.update(user="end-user-42"),
    "unknown_extension": lambda b: b.update(repetition_penalty=1.2),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_answer_relevant_change_changes_key(change):
    rc = ResponseCache(MemoryStore())
    base = body()
    changed = copy.deepcopy(base)
    CHANGES[change](changed)
    k1, k2 = rc.cache_key("t", "chat", base), rc.cache_key("t", "chat", changed)
    assert k1 is not None and k2 is not None
    assert k1 != k2


def test_route_is_part_of_key():
    rc = ResponseCache(MemoryStore())
    assert rc.cache_key("t", "route-a", body()) != rc.cache_key("t", "route-b", body())


@pytest.mark.parametrize(
    "extra",
    [{"temperature": None}, {"temperature": 0.7}, {"temperature": 1}, {"n": 2}, {"temperature": True}, {"temperature": "0"}],
    ids=["missing", "0.7", "1", "n=2", "bool", "string"],
)
def test_sampled_requests_are_not_cacheable(extra):
    rc = ResponseCache(MemoryStore())
    b = body()
    b.update(extra)
    if b.get("temperature") is None:
        del b["temperature"]
    assert rc.cache_key("t", "chat", b) is None
    d = rc.decision({}, CacheSpec(), b)
    assert (d.lookup, d.store, d.status) == (False, False, CacheStatus.BYPASS)


def test_greedy_top_k_is_cacheable_and_temperature_zero_n1():
    rc = ResponseCache(MemoryStore())
    b = body(top_k=1)
    del b["temperature"]
    assert rc.cache_key("t", "chat", b) is not None
    assert rc.cache_key("t", "chat", body(n=1)) is not None


# ----------------------------------------------------------------------------- decisions


def test_decision_flags():
    rc = ResponseCache(MemoryStore())
    spec = CacheSpec()
    d = rc.decision({}, spec, body())
    assert (d.lookup, d.store, d.status, d.semantic) == (True, True, CacheStatus.MISS, False)
    d = rc.decision({"Cache-Control": "no-store"}, spec, body())
    assert (d.lookup, d.store, d.status, d.reason) == (False, False, CacheStatus.BYPASS, "no-store")
    d = rc.decision({"cache-control": "No-Cache"}, spec, body())
    assert (d.lookup, d.store, d.status) == (False, True, CacheStatus.BYPASS)
    d = rc.decision({"CACHE-CONTROL": "max-age=0"}, spec, body())
    assert (d.lookup, d.store) == (False, True)
    d = rc.decision({"Cache-Control": "max-age=30"}, spec, body())
    assert (d.lookup, d.store, d.max_age) == (True, True, 30.0)
    d = rc.decision({"Pragma": "no-cache"}, spec, body())
    assert (d.lookup, d.store) == (False, True)
    d = rc.decision({"Cache-Control": "no-cache, no-store"}, spec, body())
    assert (d.lookup, d.store) == (False, False)
    d = rc.decision({}, CacheSpec(enabled=False), body())
    assert (d.lookup, d.store, d.status, d.reason) == (False, False, CacheStatus.BYPASS, "disabled")
    d = rc.decision({}, CacheSpec(semantic=SemanticCacheSpec(enabled=True)), body())
    assert d.semantic and d.lookup


async def serve(rc: ResponseCache, headers, spec, tenant, b, upstream_answer: bytes):
    """What the gateway pipeline does with the cache: (status, answer bytes)."""
    d = rc.decision(headers, spec, b)
    key = rc.cache_key(tenant, "chat", b)
    if d.lookup:
        hit = await rc.lookup(key, max_age=d.max_age)
        if hit is not None:
            return CacheStatus.HIT, hit.body
    if d.store:
        await rc.store(key, upstream_answer, Usage(12, 3), spec.ttl_seconds, spec.max_entry_bytes)
    return d.status, upstream_answer


async def test_no_store_neither_reads_nor_writes(store):
    rc = ResponseCache(store)
    spec = CacheSpec()
    st, _ = await serve(rc, {"cache-control": "no-store"}, spec, "t", body(), completion("first"))
    assert st == CacheStatus.BYPASS
    assert await rc.lookup(rc.cache_key("t", "chat", body())) is None  # nothing was written
    await serve(rc, {}, spec, "t", body(), completion("second"))
    st, answer = await serve(rc, {"cache-control": "no-store"}, spec, "t", body(), completion("third"))
    assert st == CacheStatus.BYPASS and b"third" in answer  # an existing entry is not read either
    st, answer = await serve(rc, {}, spec, "t", body(), completion("fourth"))
    assert st == CacheStatus.HIT and b"second" in answer  # ...nor overwritten


async def test_no_cache_skips_lookup_and_refreshes(store):
    rc = ResponseCache(store)
    spec = CacheSpec()
    st, _ = await serve(rc, {}, spec, "t", body(), completion("old"))
    assert st == CacheStatus.MISS
    st, answer = await serve(rc, {}, spec, "t", body(), completion("unused"))
    assert st == CacheStatus.HIT and b"old" in answer
    st, answer = await serve(rc, {"Cache-Control": "no-cache"}, spec, "t", body(), completion("new"))
    assert st == CacheStatus.BYPASS and b"new" in answer
    st, answer = await serve(rc, {}, spec, "t", body(), completion("unused"))
    assert st == CacheStatus.HIT and b"new" in answer


async def test_route_opt_out_never_stores(store):
    rc = ResponseCache(store)
    off = CacheSpec(enabled=False)
    await serve(rc, {}, off, "t", body(), completion("x"))
    assert await rc.lookup(rc.cache_key("t", "chat", body())) is None


async def test_max_age(store):
    rc = ResponseCache(store)
    key = rc.cache_key("t", "chat", body())
    await rc.store(key, completion(), Usage(1, 1), 60, 10_000)
    await asyncio.sleep(0.3)
    assert await rc.lookup(key, max_age=0.1) is None
    assert await rc.lookup(key, max_age=30) is not None


async def test_ttl_expiry(store):
    rc = ResponseCache(store)
    key = rc.cache_key("t", "chat", body())
    assert await rc.store(key, completion(), Usage(12, 3), 0.3, 10_000)
    hit = await rc.lookup(key)
    assert hit is not None and hit.usage == Usage(12, 3) and json.loads(hit.body)["choices"][0]["message"]["content"] == "Paris."
    await asyncio.sleep(0.5)
    assert await rc.lookup(key) is None


async def test_size_cap_and_refusals(store):
    rc = ResponseCache(store)
    key = rc.cache_key("t", "chat", body())
    big = completion("x" * 5000)
    assert not await rc.store(key, big, Usage(1, 1), 60, max_entry_bytes=len(big) - 1)
    assert await rc.lookup(key) is None
    assert await rc.store(key, big, Usage(1, 1), 60, max_entry_bytes=len(big))
    assert await rc.lookup(key) is not None
    assert not await rc.store(None, completion(), Usage(), 60, 10_000)
    assert not await rc.store(key, b'{"error": {"message": "boom"}}', Usage(), 60, 10_000)
    assert not await rc.store(key, b"not json", Usage(), 60, 10_000)


def test_savings():
    s = savings(Usage(prompt_tokens=1000, completion_tokens=500, cached_tokens=200), Pricing(input=2.0, cached_input=1.0, output=8.0))
    assert s.tokens == 1500
    assert s.usd == pytest.approx((800 * 2.0 + 200 * 1.0 + 500 * 8.0) / 1e6)


# ----------------------------------------------------------------------------- stream replay

TOOL_CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius", "detail": "full"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}},
]
LONG = "The capital of France is Paris, a city on the Seine known for the Eiffel Tower and the Louvre. Ünïcödé ✓."


def _reassemble(payloads: list[bytes]) -> ChatCompletion:
    state = ChatCompletionStreamState()
    for p in payloads:
        state.handle_chunk(ChatCompletionChunk.model_validate_json(p))
    return state.get_final_completion()


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("kind", ["content", "tools", "both"])
def test_replay_parses_with_sdk_and_reassembles(kind, include_usage):
    content = None if kind == "tools" else LONG
    tools = None if kind == "content" else TOOL_CALLS
    original = completion(content, tool_calls=tools)
    orig = ChatCompletion.model_validate_json(original)
    payloads = replay_chunks(original, include_usage)
    chunks = [ChatCompletionChunk.model_validate_json(p) for p in payloads]
    assert {(c.id, c.model, c.created, c.object) for c in chunks} == {(orig.id, orig.model, orig.created, "chat.completion.chunk")}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ("" if content is not None else None)
    if content is None:  # tool-call-only answers open with role + the first call, as OpenAI does
        assert chunks[0].choices[0].delta.tool_calls[0].function.name == "get_weather"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    if content:
        assert len(content_chunks) >= 3  # split into several pieces, like a live stream
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == orig.choices[0].finish_reason
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 15
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.usage is None and c.choices for c in chunks)

    final = _reassemble(payloads)
    msg = final.choices[0].message
    assert msg.content == orig.choices[0].message.content
    assert [(t.id, t.function.name, t.function.arguments) for t in msg.tool_calls or []] == [
        (t.id, t.function.name, t.function.arguments) for t in orig.choices[0].message.tool_calls or []
    ]
    if tools:
        assert json.loads(msg.tool_calls[0].function.arguments)["city"] == "Paris"


def test_replay_identity_override_and_logprobs():
    doc = json.loads(completion("Hello world"))
    doc["choices"][0]["logprobs"] = {
        "content": [
            {"token": "Hello", "logprob": -0.1, "bytes": list(b"Hello"), "top_logprobs": []},
            {"token": " world", "logprob": -0.2, "bytes": list(b" world"), "top_logprobs": []},
        ],
        "refusal": None,
    }
    payloads = replay_chunks(json.dumps(doc).encode(), False, id="chatcmpl-new", created=42)
    chunks = [ChatCompletionChunk.model_validate_json(p) for p in payloads]
    assert {(c.id, c.created) for c in chunks} == {("chatcmpl-new", 42)}
    with_lp = [c for c in chunks if c.choices[0].logprobs]
    assert [c.choices[0].delta.content for c in with_lp] == ["Hello", " world"]
    assert _reassemble(payloads).choices[0].message.content == "Hello world"


async def test_replay_through_official_client_sse():
    """The replayed payloads, framed as SSE, stream through AsyncOpenAI like a live answer."""
    original = completion(LONG, tool_calls=TOOL_CALLS[:1])
    sse = b"".join(b"data: " + p + b"\n\n" for p in replay_chunks(original, True)) + b"data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = AsyncOpenAI(api_key="sk-test", base_url="http://gateway.test/v1", http_client=http, max_retries=0)
        async with client.chat.completions.stream(model="chat", messages=[{"role": "user", "content": "hi"}]) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
    msg = final.choices[0].message
    assert msg.content == LONG
    assert msg.tool_calls[0].function.arguments == TOOL_CALLS[0]["function"]["arguments"]
    assert final.usage.prompt_tokens == 12 and final.id == "chatcmpl-abc123"


# ----------------------------------------------------------------------------- semantic


SEM = CacheSpec(semantic=SemanticCacheSpec(enabled=True, threshold=0.85))


async def _seed(sc, rc, tenant, b, answer: bytes, spec=SEM):
    key = rc.cache_key(tenant, "chat", b)
    assert await rc.store(key, answer, Usage(12, 3), 60, 100_000)
    q = sc.prepare(tenant, "chat", b, spec)
    assert q is not None
    assert await sc.add(q, key, 60)
    return key


async def test_semantic_paraphrase_hits_and_different_question_misses(store, embedder):
    from cache.semantic import SemanticCache

    rc = ResponseCache(store)
    sc = SemanticCache(rc, embedder)
    await _seed(sc, rc, "acme", body("What is the capital of France?"), completion("Paris."))

    hit = await sc.lookup(sc.prepare("acme", "chat", body("Tell me France's capital city"), SEM))
    assert hit is not None and b"Paris." in hit.body
    assert 0.85 <= hit.similarity < 1.0

    q = sc.prepare("acme", "chat", body("What is the capital of Germany?"), SEM)
    assert await sc.lookup(q) is None
    assert q.similarity is not None and q.similarity < 0.85  # it was compared, and was too far
    assert await sc.lookup(sc.prepare("acme", "chat", body("How do I bake sourdough bread?"), SEM)) is None
    # stricter threshold: the same paraphrase misses
    strict = CacheSpec(semantic=SemanticCacheSpec(enabled=True, threshold=0.99))
    assert await sc.lookup(sc.prepare("acme", "chat", body("Tell me France's capital city"), strict)) is None


async def test_semantic_scope(store, embedder):
    from cache.semantic import SemanticCache

    rc = ResponseCache(store)
    sc = SemanticCache(rc, embedder)
    await _seed(sc, rc, "acme", body("What is the capital of France?"), completion("Paris."))
    para = "Tell me France's capital city"
    # another tenant, another system prompt, other parameters, another route: all miss
    assert await sc.lookup(sc.prepare("globex", "chat", body(para), SEM)) is None
    assert await sc.lookup(sc.prepare("acme", "chat", body(para, system="Answer in French."), SEM)) is None
    assert await sc.lookup(sc.prepare("acme", "chat", body(para, system=None), SEM)) is None
    assert await sc.lookup(sc.prepare("acme", "chat", body(para, max_tokens=5), SEM)) is None
    assert await sc.lookup(sc.prepare("acme", "chat-large", body(para), SEM)) is None
    assert await sc.lookup(sc.prepare("acme", "chat", body(para, user="u2"), SEM)) is None
    # and the control: same scope hits
    assert await sc.lookup(sc.prepare("acme", "chat", body(para), SEM)) is not None


async def test_semantic_exact_text_other_tenant_misses(store, embedder):
    from cache.semantic import SemanticCache

    rc = ResponseCache(store)
    sc = SemanticCache(rc, embedder)
    await _seed(sc, rc, "acme", body(), completion("secret acme answer"))
    assert await sc.lookup(sc.prepare("globex", "chat", body(), SEM)) is None
    assert await rc.lookup(rc.cache_key("globex", "chat", body())) is None


async def test_semantic_not_for_sampled_disabled_or_multimodal(embedder):
    from cache.semantic import SemanticCache

    sc = SemanticCache(ResponseCache(MemoryStore()), embedder)
    assert sc.prepare("t", "chat", body(temperature=0.7), SEM) is None
    assert sc.prepare("t", "chat", body(), CacheSpec()) is None  # semantic not enabled
    img = body()
    img["messages"][-1]["content"] = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    assert sc.prepare("t", "chat", img, SEM) is None
    parts = body()
    parts["messages"][-1]["content"] = [{"type": "text", "text": "What is the capital of France?"}]
    assert sc.prepare("t", "chat", parts, SEM) is not None


async def test_semantic_multi_turn_only_when_opted_in(store, embedder):
    from cache.semantic import SemanticCache

    rc = ResponseCache(store)
    sc = SemanticCache(rc, embedder)
    conv = body("What is the capital of France?")
    conv["messages"][1:1] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    assert sc.prepare("t", "chat", conv, SEM) is None
    multi = CacheSpec(semantic=SemanticCacheSpec(enabled=True, threshold=0.85, multi_turn=True))
    await _seed(sc, rc, "t", conv, completion("Paris."), spec=multi)
    para = copy.deepcopy(conv)
    para["messages"][-1]["content"] = "Tell me France's capital city"
    assert await sc.lookup(sc.prepare("t", "chat", para, multi)) is not None
    other_history = copy.deepcopy(para)
    other_history["messages"][1]["content"] = "Let's talk about Spain."
    assert await sc.lookup(sc.prepare("t", "chat", other_history, multi)) is None


async def test_semantic_number_guard_and_expiry(store, embedder):
    from cache.semantic import SemanticCache

    rc = ResponseCache(store)
    sc = SemanticCache(rc, embedder)
    await _seed(sc, rc, "t", body("What is 12 times 7?"), completion("84"))
    q = sc.prepare("t", "chat", body("What is 12 times 8?"), SEM)
    assert await sc.lookup(q) is None and q.similarity >= 0.85  # close embeddings, other numbers
    assert await sc.lookup(sc.prepare("t", "chat", body("what is 12 times 7"), SEM)) is not None
    # the index entry dies with the exact entry (queries embedded first: only the TTL is timed)
    short = body("Who wrote Hamlet?")
    seed_q = sc.prepare("t", "chat", short, SEM)
    probe, probe_later = (sc.prepare("t", "chat", body("Who is the author of Hamlet?"), SEM) for _ in range(2))
    for q in (seed_q, probe, probe_later):
        await sc._vector(q)
    key = rc.cache_key("t", "chat", short)
    await rc.store(key, completion("Shakespeare."), Usage(1, 1), 1.0, 100_000)
    await sc.add(seed_q, key, 1.0)
    assert await sc.lookup(probe) is not None
    await asyncio.sleep(1.2)
    assert await sc.lookup(probe_later) is None


async def test_semantic_index_is_bounded(embedder):
    from cache.semantic import SemanticCache

    rc = ResponseCache(MemoryStore())
    sc = SemanticCache(rc, embedder, max_entries_per_scope=2)
    for q in ["What is the capital of France?", "Who wrote Hamlet?", "How tall is Mount Everest?"]:
        await _seed(sc, rc, "t", body(q), completion(q))
    assert await sc.lookup(sc.prepare("t", "chat", body("Tell me France's capital city"), SEM)) is None  # oldest dropped
    assert await sc.lookup(sc.prepare("t", "chat", body("Who is the author of Hamlet?"), SEM)) is not None


async def test_semantic_skips_texts_longer_than_the_model_window(embedder):
    from cache.semantic import SemanticCache

    rc = ResponseCache(MemoryStore())
    sc = SemanticCache(rc, embedder)
    long_q = "Summarise this. " + "lorem ipsum dolor sit amet " * 120
    key = rc.cache_key("t", "chat", body(long_q))
    await rc.store(key, completion("sum"), Usage(1, 1), 60, 100_000)
    assert not await sc.add(sc.prepare("t", "chat", body(long_q), SEM), key, 60)
    assert await sc.lookup(sc.prepare("t", "chat", body(long_q + " tail"), SEM)) is None


# ----------------------------------------------------------------------------- stores


async def test_memory_lru_evicts_by_entries():
    s = MemoryStore(max_entries=3, max_bytes=10_000)
    for k in "abc":
        await s.set(k, b"v" + k.encode(), 60)
    assert await s.get("a") == b"va"  # a is now most recent
    await s.set("d", b"vd", 60)
    assert await s.get("b") is None  # least recently used went first
    assert [await s.get(k) for k in "acd"] == [b"va", b"vc", b"vd"]
    assert len(s) == 3 and s.evictions == 1


async def test_memory_lru_evicts_by_bytes():
    s = MemoryStore(max_entries=100, max_bytes=100)  # key (1 byte) + value counted
    await s.set("a", b"x" * 39, 60)
    await s.set("b", b"x" * 39, 60)
    assert s.nbytes == 80
    await s.set("c", b"x" * 39, 60)
    assert await s.get("a") is None and await s.get("b") is not None and await s.get("c") is not None
    assert s.nbytes <= 100
    await s.set("huge", b"x" * 200, 60)  # larger than the whole store: not stored, nothing evicted
    assert await s.get("huge") is None and await s.get("b") is not None
    await s.set("b", b"small", 60)  # overwrite re-accounts bytes
    assert s.nbytes == 1 + 5 + 1 + 39


async def test_memory_ttl_and_delete():
    s = MemoryStore()
    await s.set("k", b"v", 0.2)
    await s.set("z", b"v", 0)  # ttl 0: not stored
    assert await s.get("k") == b"v" and await s.get("z") is None
    await asyncio.sleep(0.3)
    assert await s.get("k") is None and len(s) == 0
    await s.set("k", b"v", 60)
    await s.delete("k")
    assert await s.get("k") is None and await s.ping()


async def test_redis_store_compresses_and_sets_ttl(redis_store, redis_client):
    value = json.dumps({"content": "Paris is the capital of France. " * 200}).encode()
    await redis_store.set("k", value, 30)
    raw = await redis_client.get(redis_store.prefix + "k")
    assert raw[:1] == b"\x01" and len(raw) < len(value) / 5
    assert 0 < await redis_client.pttl(redis_store.prefix + "k") <= 30_000
    assert await redis_store.get("k") == value
    await redis_store.set("small", b"tiny", 30)
    assert await redis_client.get(redis_store.prefix + "small") == b"\x00tiny"
    assert await redis_store.get("small") == b"tiny"
    # a value written without compression reads back through a compressing store
    plain = RedisStore(redis_client, prefix=redis_store.prefix, compress=False)
    await plain.set("p", value, 30)
    assert await redis_store.get("p") == value
    await redis_store.delete("k")
    assert await redis_store.get("k") is None and redis_store.errors == 0


async def test_redis_corrupt_value_is_a_miss(redis_store, redis_client):
    await redis_client.set(redis_store.prefix + "bad", b"\x01not zlib")
    assert await redis_store.get("bad") is None and redis_store.errors == 1
    rc = ResponseCache(redis_store)
    key = rc.cache_key("t", "chat", body())
    await redis_client.set(redis_store.prefix + key, b"\x00garbage")
    assert await rc.lookup(key) is None


async def test_redis_outage_is_a_miss_never_an_error(embedder):
    from cache.semantic import SemanticCache

    store = dead_redis_store(timeout=0.5, backoff=5.0)
    t0 = time.monotonic()
    assert await store.get("k") is None
    await store.set("k", b"v", 60)  # dropped (skipped during the backoff)
    await store.delete("k")
    assert store.errors >= 1 and not store.available and store.last_error
    assert store.skipped >= 2
    assert not await store.ping()  # health checks always probe
    rc = ResponseCache(store)
    key = rc.cache_key("t", "chat", body())
    assert await rc.lookup(key) is None
    assert await rc.store(key, completion(), Usage(1, 1), 60, 10_000)  # accepted, dropped by the store
    sc = SemanticCache(rc, embedder)
    q = sc.prepare("t", "chat", body(), SEM)
    assert await sc.lookup(q) is None
    await sc.add(q, key, 60)
    assert time.monotonic() - t0 < 3.0  # the backoff keeps an outage from slowing every request
    await store.aclose()


async def test_redis_outage_without_backoff_each_call_fails_fast():
    store = dead_redis_store(timeout=0.3, backoff=0.0)
    for _ in range(3):
        assert await store.get("k") is None
        await store.set("k", b"v", 1)
    assert store.errors == 6 and store.skipped == 0
    await store.aclose()


async def test_redis_restart_flush_and_killed_connections(redis_store, redis_client, embedder):
    from cache.semantic import SemanticCache

    rc = ResponseCache(redis_store)
    sc = SemanticCache(rc, embedder)
    key = await _seed(sc, rc, "t", body(), completion("Paris."))
    assert await rc.lookup(key) is not None
    # a restart without persistence: every key under the prefix is gone
    keys = [k async for k in redis_client.scan_iter(match=redis_store.prefix + "*")]
    assert len(keys) == 2  # exact entry + semantic index
    await redis_client.delete(*keys)
    assert await rc.lookup(key) is None
    assert await sc.lookup(sc.prepare("t", "chat", body("Tell me France's capital city"), SEM)) is None
    # server-side connection kill (what a restart does to open connections): no error, then recovery
    await _seed(sc, rc, "t", body(), completion("Paris again."))
    own_id = await redis_client.client_id()  # only our own connection: Redis is shared with others
    admin = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        assert await admin.client_kill_filter(_id=own_id) == 1
    finally:
        await admin.aclose()
    first = await rc.lookup(key)  # may be a miss (counted) or a hit after the client reconnects
    assert first is None or b"Paris again." in first.body
    hit = await rc.lookup(key)
    assert hit is not None and b"Paris again." in hit.body
    assert await redis_store.ping()


# ----------------------------------------------------------------------------- prefix


def test_prefix_fingerprint():
    none_fp, n = prefix_fingerprint({"messages": [{"role": "user", "content": "hi"}]})
    assert none_fp is None and n == 0
    fp1, n1 = prefix_fingerprint(body("What is the capital of France?", system="S" * 400))
    fp2, n2 = prefix_fingerprint(body("Something else entirely", system="S" * 400))
    assert fp1 is not None and fp1 == fp2 and len(fp1) == 64  # the last user turn is not prefix
    assert n1 == n2 == (6 + 400) // 4  # role + content characters / 4
    fp3, _ = prefix_fingerprint(body("What is the capital of France?", system="T" * 400))
    assert fp3 != fp1
    fp4, n4 = prefix_fingerprint(body("What is the capital of France?", system="S" * 400, tools=[TOOL]))
    assert fp4 not in (None, fp1) and n4 > n1
    tools_only, _ = prefix_fingerprint(body(system=None, tools=[TOOL]))
    assert tools_only is not None
    # leading turns belong to the prefix; growing the conversation keeps earlier structure stable
    conv = body("Second question", system="S")
    conv["messages"][1:1] = [{"role": "user", "content": "First"}, {"role": "assistant", "content": "Answer"}]
    fp5, n5 = prefix_fingerprint(conv)
    assert fp5 not in (None, prefix_fingerprint(body(system="S"))[0])
    assert n5 == len("systemSuserFirstassistantAnswer") // 4
    # order of fields inside messages does not matter
    reordered = copy.deepcopy(conv)
    reordered["messages"] = [dict(reversed(list(m.items()))) for m in reordered["messages"]]
    assert prefix_fingerprint(reordered)[0] == fp5


def test_prompt_cache_key_is_tenant_scoped():
    fp, _ = prefix_fingerprint(body(system="S" * 100))
    a, b = prompt_cache_key("acme", fp), prompt_cache_key("globex", fp)
    assert a != b and a == prompt_cache_key("acme", fp)
    assert "acme" not in a and len(a) <= 64
