"""Response and prefix caching through a real gateway process, checked with the official SDK."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai
import pytest

from gateway.auth import hash_key
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.anthropic_stub import start_anthropic_stub
from tests.stubs.openai_stub import OpenAIStub, StubControl

KEY_A, KEY_B, ADMIN = "sk-a-" + uuid.uuid4().hex, "sk-b-" + uuid.uuid4().hex, "sk-admin-" + uuid.uuid4().hex
Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def upstream():
    with OpenAIStub(StubControl(api_key="sk-upstream")) as stub:
        yield stub


@pytest.fixture(scope="module")
def anthropic_upstream():
    with start_anthropic_stub(api_key="sk-ant-test") as (base_url, controller):
        yield base_url, controller


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream, anthropic_upstream):
    policy = write_policy(tmp_path_factory.mktemp("cache"), f"""
        targets:
          oa:
            provider: openai
            model: gpt-4o-mini
            base_url: {upstream.base_url}
            api_key_env: STUB_OPENAI_KEY
            pricing: {{input: 1.0, cached_input: 0.1, output: 2.0}}
          claude:
            provider: anthropic
            model: claude-test
            base_url: {anthropic_upstream[0]}
            api_key_env: STUB_ANTHROPIC_KEY
        models:
          cached: {{targets: [oa], cache: {{ttl_seconds: 2, prompt_cache_min_tokens: 256}}}}
          semantic: {{targets: [oa], cache: {{semantic: {{enabled: true, threshold: 0.85}}}}}}
          uncached: {{targets: [oa], cache: {{enabled: false}}}}
          claude: {{targets: [claude], cache: {{prompt_cache_min_tokens: 256}}}}
        admin_keys: ["sha256:{hash_key(ADMIN)}"]
        tenants:
          a: {{keys: ["sha256:{hash_key(KEY_A)}"]}}
          b: {{keys: ["sha256:{hash_key(KEY_B)}"]}}
    """)
    with GatewayProcess(policy, env={"STUB_ANTHROPIC_KEY": "sk-ant-test"}) as proc:
        yield proc


@pytest.fixture(autouse=True)
def _reset(upstream):
    upstream.control.recover()
    upstream.control.requests.clear()
    upstream.control.headers.clear()
    upstream.control.cached_tokens = 0
    upstream.control.usage_prompt_tokens = None
    upstream.control.reply = None


def settled_usage(gw, tenant: str) -> dict:
    """Usage once settlement (which follows the reply) has landed."""
    for _ in range(100):
        document = httpx.get(f"{gw.root_url}/admin/tenants/{tenant}/usage", headers={"authorization": f"Bearer {ADMIN}"}).json()
        if document["windows"]["usd_per_month"]["reserved"] == 0:
            return document
        time.sleep(0.05)
    return document


def client(gw, key=KEY_A):
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def ask(gw, model="cached", key=KEY_A, messages=Q, **kwargs):
    return client(gw, key).chat.completions.with_raw_response.create(model=model, messages=messages, **kwargs)


def until_cached(gw, **kwargs):
    """The store happens after the reply is sent; poll briefly for the entry."""
    for _ in range(50):
        raw = ask(gw, **kwargs)
        if raw.headers["x-gateway-cache"] == "hit":
            return raw
        time.sleep(0.05)
    raise AssertionError("never cached")


def unique(text: str) -> list[dict]:
    return [{"role": "user", "content": f"{text} [{uuid.uuid4().hex[:6]}]"}]


def test_deterministic_request_hits_and_replays_as_a_stream(gw, upstream):
    messages = unique("capital of France?")
    first = ask(gw, messages=messages, temperature=0)
    assert first.headers["x-gateway-cache"] == "miss"
    hit = until_cached(gw, messages=messages, temperature=0)
    assert hit.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert hit.headers["x-gateway-target"] == "cache"
    assert len(upstream.control.requests) == 1
    chunks = list(client(gw).chat.completions.create(model="cached", messages=messages, temperature=0, stream=True,
                                                      stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first.parse().choices[0].message.content
    assert chunks[-1].usage.total_tokens == first.parse().usage.total_tokens
    assert len(upstream.control.requests) == 1, "the stream was replayed from the cache"


def only_if_cached(gw, messages, **extra) -> httpx.Response:
    return httpx.post(gw.base_url + "/chat/completions",
                      headers={"authorization": f"Bearer {KEY_A}", "cache-control": "only-if-cached"},
                      json={"model": "cached", "messages": messages, "temperature": 0, **extra})


def test_streamed_answers_are_cached_and_cut_streams_are_not(gw, upstream):
    messages = unique("streamed first")
    streamed = list(client(gw).chat.completions.create(model="cached", messages=messages, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    for _ in range(50):  # stored right after the stream ends
        hit = only_if_cached(gw, messages)
        if hit.status_code == 200:
            break
        time.sleep(0.05)
    assert hit.status_code == 200 and hit.headers["x-gateway-cache"] == "hit"
    assert hit.json()["choices"][0]["message"]["content"] == text
    assert hit.json()["usage"]["completion_tokens"] == len(text.split(" "))
    assert len(upstream.control.requests) == 1
    # A stream cut mid-way is never stored.
    cut = unique("cut short")
    upstream.control.reply = "one two three four five"
    upstream.control.fail_next(1, status=200, cut_after_chunks=2)
    with pytest.raises(openai.APIError):
        list(client(gw).chat.completions.create(model="cached", messages=cut, temperature=0, stream=True))
    time.sleep(0.3)
    assert only_if_cached(gw, cut).status_code == 504


def test_assembled_stream_round_trips_through_replay():
    from protocols.openai_chat import assemble_completion, replay_chunks

    completion = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                     "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                         {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": [1, 2, 3]}'}},
                         {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}},
                    {"index": 1, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "plain text answer here", "refusal": None}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    body = json.dumps(completion).encode()
    assembled = json.loads(assemble_completion(replay_chunks(body, include_usage=True)))
    assert assembled["choices"] == completion["choices"]
    assert assembled["usage"] == completion["usage"] and assembled["id"] == "chatcmpl-1"
    unfinished = replay_chunks(body, include_usage=False)[:-3]
    assert assemble_completion(unfinished) is None, "a stream without its finish is not an answer"
    assert assemble_completion([b'{"error": {"message": "boom"}}']) is None


def test_sampled_and_opted_out_requests_bypass(gw, upstream):
    messages = unique("sampled")
    for _ in range(2):
        assert ask(gw, messages=messages, temperature=0.7).headers["x-gateway-cache"] == "bypass"
        assert ask(gw, messages=messages).headers["x-gateway-cache"] == "bypass", "temperature missing = sampled"
        assert ask(gw, model="uncached", messages=messages, temperature=0).headers["x-gateway-cache"] == "bypass"
        time.sleep(0.1)
    assert len(upstream.control.requests) == 6


def test_only_if_cached_never_calls_upstream(gw, upstream):
    messages = unique("only-if-cached")
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, messages=messages, temperature=0, extra_headers={"cache-control": "only-if-cached"})
    assert info.value.status_code == 504 and info.value.body["code"] == "not_cached"
    assert upstream.control.requests == []


def test_no_store_and_no_cache(gw, upstream):
    messages = unique("no-store")
    raw = ask(gw, messages=messages, temperature=0, extra_headers={"cache-control": "no-store"})
    assert raw.headers["x-gateway-cache"] == "bypass"
    time.sleep(0.2)
    assert ask(gw, messages=messages, temperature=0).headers["x-gateway-cache"] == "miss", "no-store wrote nothing"
    until_cached(gw, messages=messages, temperature=0)
    before = len(upstream.control.requests)
    refreshed = ask(gw, messages=messages, temperature=0, extra_headers={"cache-control": "no-cache"})
    assert refreshed.headers["x-gateway-cache"] == "bypass"
    assert len(upstream.control.requests) == before + 1, "no-cache skipped the lookup"


def test_ttl_expiry(gw, upstream):
    messages = unique("ttl")
    ask(gw, messages=messages, temperature=0)
    until_cached(gw, messages=messages, temperature=0)
    time.sleep(2.2)
    assert ask(gw, messages=messages, temperature=0).headers["x-gateway-cache"] == "miss"


def test_tenants_never_share_entries(gw, upstream):
    messages = unique("shared question")
    ask(gw, messages=messages, temperature=0, key=KEY_A)
    until_cached(gw, messages=messages, temperature=0, key=KEY_A)
    assert ask(gw, messages=messages, temperature=0, key=KEY_B).headers["x-gateway-cache"] == "miss"


def test_semantic_cache_paraphrase_hits_other_question_and_system_prompt_miss(gw, upstream):
    tag = uuid.uuid4().hex[:6]
    for _ in range(300):  # the embedding model loads in the background at startup
        if httpx.get(gw.root_url + "/readyz").json()["checks"]["semantic_cache"]["detail"] == "model loaded":
            break
        time.sleep(0.1)
    system = {"role": "system", "content": f"Geography helper {tag}."}
    ask(gw, model="semantic", messages=[system, {"role": "user", "content": "What is the capital of France?"}], temperature=0)
    paraphrase = [system, {"role": "user", "content": "Tell me France's capital city"}]
    probe = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {KEY_A}",
                       "cache-control": "only-if-cached"}, json={"model": "semantic", "messages": paraphrase, "temperature": 0})
    for _ in range(100):  # the store (and its embedding) happens after the reply; probing has no side effects
        if probe.status_code == 200:
            break
        assert probe.status_code == 504 and probe.json()["error"]["code"] == "not_cached"
        time.sleep(0.1)
        probe = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {KEY_A}",
                           "cache-control": "only-if-cached"}, json={"model": "semantic", "messages": paraphrase,
                                                                    "temperature": 0})
    hit = ask(gw, model="semantic", messages=paraphrase, temperature=0)
    assert hit.headers["x-gateway-cache"] == "hit"
    assert float(hit.headers["x-gateway-cache-similarity"]) >= 0.85
    other = ask(gw, model="semantic", messages=[system, {"role": "user", "content": "How do volcanoes form?"}], temperature=0)
    assert other.headers["x-gateway-cache"] == "miss"
    other_system = {"role": "system", "content": f"Travel agent {tag}."}
    moved = ask(gw, model="semantic", messages=[other_system, {"role": "user", "content": "Tell me France's capital city"}],
                temperature=0)
    assert moved.headers["x-gateway-cache"] == "miss"
    semantic_b = ask(gw, model="semantic", key=KEY_B, temperature=0,
                     messages=[system, {"role": "user", "content": "Tell me France's capital city"}])
    assert semantic_b.headers["x-gateway-cache"] == "miss", "semantic entries are tenant-scoped too"


def test_openai_gets_prompt_cache_key_for_long_static_prefixes(gw, upstream):
    system = {"role": "system", "content": "Policy manual. " * 120}
    ask(gw, messages=[system, {"role": "user", "content": "q1"}])
    ask(gw, messages=[system, {"role": "user", "content": "q2"}])
    keys = [r.get("prompt_cache_key") for r in upstream.control.requests]
    assert keys[0] and keys[0] == keys[1] and keys[0].startswith("gw-")
    ask(gw, key=KEY_B, messages=[system, {"role": "user", "content": "q1"}])
    assert upstream.control.requests[-1]["prompt_cache_key"] != keys[0], "tenants never share provider caches"
    ask(gw, messages=[{"role": "system", "content": "short"}, {"role": "user", "content": "q"}])
    assert "prompt_cache_key" not in upstream.control.requests[-1]


def test_anthropic_gets_cache_control_on_long_static_prefixes(gw, anthropic_upstream):
    _, stub = anthropic_upstream
    system = {"role": "system", "content": "Long house rules. " * 300}  # over the stub's 1,024-token cache minimum
    ask(gw, model="claude", messages=[system, {"role": "user", "content": "q1"}])
    second = ask(gw, model="claude", messages=[system, {"role": "user", "content": "q2"}]).parse()
    sent = stub.last_body
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    ask(gw, model="claude", messages=[{"role": "system", "content": "short"}, {"role": "user", "content": "q"}])
    system_sent = stub.last_body.get("system")
    assert not (isinstance(system_sent, list) and any("cache_control" in b for b in system_sent))


def test_cached_prompt_tokens_are_priced_at_the_cached_rate(gw, upstream):
    upstream.control.usage_prompt_tokens = 1000
    upstream.control.cached_tokens = 800
    before = settled_usage(gw, "b")
    done = ask(gw, key=KEY_B, messages=unique("priced")).parse()
    assert done.usage.prompt_tokens_details.cached_tokens == 800
    after = settled_usage(gw, "b")
    spent = after["windows"]["usd_per_month"]["spent"] - before["windows"]["usd_per_month"]["spent"]
    expected = (200 * 1.0 + 800 * 0.1 + done.usage.completion_tokens * 2.0) / 1e6
    assert spent == pytest.approx(expected, abs=1e-9)


def test_dead_redis_means_cache_misses_never_errors(tmp_path, upstream):
    policy = write_policy(tmp_path, f"""
        targets:
          oa: {{provider: openai, model: m, base_url: "{upstream.base_url}", api_key_env: STUB_OPENAI_KEY}}
        models:
          cached: {{targets: [oa]}}
    """)
    with GatewayProcess(policy, redis_url="redis://127.0.0.1:1/0", extra_args=["--budgets-fail-mode", "open"]) as proc:
        for _ in range(2):
            raw = ask(proc, key=proc.dev_key, messages=Q, temperature=0)
            assert raw.parse().choices[0].message.content == "echo: What is the capital of France?"
            assert raw.headers["x-gateway-cache"] == "miss"
