"""/v1/completions, /v1/embeddings and /v1/models/{id} through a real gateway process, driven by
the official `openai` SDK against a stub upstream that speaks OpenAI's documented wire formats."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.openai_stub import free_port

POLICY = """
    targets:
      stub-openai:
        provider: openai
        model: gpt-4o-mini
        base_url: {base_url}
        api_key_env: STUB_OPENAI_KEY
        pricing: {{input: 0.15, output: 0.6}}
        timeouts: {{connect: 2, first_token: 5, total: 10}}
      dead-openai:
        provider: openai
        model: gpt-4o-mini
        base_url: http://127.0.0.1:{dead_port}/v1
        api_key_env: STUB_OPENAI_KEY
        timeouts: {{connect: 1, first_token: 2, total: 3}}
      claude:
        provider: anthropic
        model: claude-test
        base_url: http://127.0.0.1:{dead_port}
        api_key_env: STUB_OPENAI_KEY
    models:
      gpt-test:
        targets: [dead-openai, stub-openai]
        max_tokens: 100
      text-embed:
        targets: [stub-openai]
      claude-only:
        targets: [claude]
    retry: {{attempts: 1}}
    default_model: gpt-test
    admin_keys: ["{admin_hash}"]
    tenants:
      tiny:
        keys: ["{tiny_hash}"]
        limits: {{tokens_per_day: 60}}
    limits:
      max_body_bytes: 200000
      max_prompt_tokens: 2000
"""
TINY_KEY = "sk-tiny-tenant"
ADMIN_KEY = "sk-admin-endpoints"


@pytest.fixture(scope="module")
def gw(tmp_path_factory, _module_stub):
    from gateway.auth import hash_key

    text = POLICY.format(base_url=_module_stub.base_url, dead_port=free_port(), tiny_hash=hash_key(TINY_KEY),
                         admin_hash=hash_key(ADMIN_KEY))
    path = write_policy(tmp_path_factory.mktemp("endpoints"), text)
    with GatewayProcess(path) as proc:
        yield proc


@pytest.fixture
def client(gw, openai_stub):
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)


def test_completions_forward_verbatim_and_fail_over(client, openai_stub):
    raw = client.completions.with_raw_response.create(
        model="gpt-test", prompt="Say hello", max_tokens=8, extra_body={"vendor_flag": {"x": 1}})
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.choices[0].text == "echo: Say hello"
    assert completion.usage.completion_tokens == 3
    assert raw.headers["x-gateway-target"] == "stub-openai"
    assert raw.headers["x-gateway-fallbacks"] == "dead-openai", "the dead primary failed over invisibly"
    sent = openai_stub.control.requests[-1]
    assert sent == {"model": "gpt-4o-mini", "prompt": "Say hello", "max_tokens": 8, "vendor_flag": {"x": 1}}


def test_completions_stream_and_hidden_usage(client, openai_stub, gw):
    chunks = list(client.completions.create(model="gpt-test", prompt="one two three", max_tokens=10, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: one two three"
    assert chunks[-1].usage.completion_tokens == 4
    assert openai_stub.control.requests[-1]["stream_options"] == {"include_usage": True}
    plain = list(client.completions.create(model="gpt-test", prompt="four five", max_tokens=10, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"
    assert openai_stub.control.requests[-1]["stream_options"] == {"include_usage": True}, "usage is always asked for"


def test_deterministic_completions_are_cached_and_replayed_as_streams(client, openai_stub):
    first = client.completions.with_raw_response.create(model="gpt-test", prompt="cache me", max_tokens=5,
                                                        temperature=0)
    second = client.completions.with_raw_response.create(model="gpt-test", prompt="cache me", max_tokens=5,
                                                         temperature=0)
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert second.parse().choices[0].text == first.parse().choices[0].text
    calls = len(openai_stub.control.requests)
    streamed = list(client.completions.create(model="gpt-test", prompt="cache me", max_tokens=5, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "echo: cache me"
    assert len(openai_stub.control.requests) == calls, "the replay spent nothing upstream"


def test_embeddings_float_base64_dimensions_and_cache(client, openai_stub):
    floats = client.embeddings.with_raw_response.create(model="text-embed", input=["alpha", "beta"],
                                                        encoding_format="float", dimensions=4)
    data = floats.parse()
    assert [len(d.embedding) for d in data.data] == [4, 4] and data.usage.prompt_tokens == 2
    assert openai_stub.control.requests[-1] == {"model": "gpt-4o-mini", "input": ["alpha", "beta"],
                                                "encoding_format": "float", "dimensions": 4}
    # The SDK's default is base64, which it decodes: the same vectors.
    decoded = client.embeddings.create(model="text-embed", input=["alpha", "beta"], dimensions=4)
    assert decoded.data[1].embedding == pytest.approx(data.data[1].embedding, abs=1e-6)
    again = client.embeddings.with_raw_response.create(model="text-embed", input=["alpha", "beta"],
                                                       encoding_format="float", dimensions=4)
    assert (floats.headers["x-gateway-cache"], again.headers["x-gateway-cache"]) == ("miss", "hit")


def test_unsupported_endpoint_for_a_target_is_a_clear_400(client, openai_stub):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="claude-only", input="x")
    assert caught.value.code == "unsupported_endpoint" and "openai.embeddings" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="claude-only", prompt="x")
    assert openai_stub.control.requests == []


def test_models_retrieve(client):
    model = client.models.retrieve("gpt-test")
    assert (model.id, model.object, model.owned_by) == ("gpt-test", "model", "hybrid-gateway")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_bad_input_gets_openai_errors(gw, client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="gpt-test", prompt="x", max_tokens=101)
    assert caught.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="text-embed", input=[])
    assert caught.value.param == "input"
    with pytest.raises(openai.BadRequestError) as caught:  # OpenAI's limit on inputs per request
        client.embeddings.create(model="text-embed", input=["x"] * 2049, encoding_format="float")
    assert caught.value.code == "too_many_inputs"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="gpt-test", prompt=["text", 42])  # type: ignore[list-item]
    assert caught.value.param == "prompt"
    nested = '{"model": "gpt-test", "prompt": "x", "extra": ' + "[" * 200 + "]" * 200 + "}"
    response = httpx.post(gw.base_url + "/completions", content=nested, timeout=10,
                          headers={"authorization": f"Bearer {gw.dev_key}", "content-type": "application/json"})
    assert response.status_code == 400 and "nested" in response.json()["error"]["message"]


def test_budgets_count_embedding_input_and_refuse_with_429(gw, openai_stub):
    tiny = openai.OpenAI(base_url=gw.base_url, api_key=TINY_KEY, max_retries=0)
    tiny.embeddings.create(model="text-embed", input="x" * 120, encoding_format="float")  # ~30 tokens
    usage = httpx.get(gw.base_url + "/usage", headers={"authorization": f"Bearer {TINY_KEY}"}, timeout=5).json()
    assert json.dumps(usage).count('"spent"') and usage["windows"]["tokens_per_day"]["spent"] == 30
    with pytest.raises(openai.RateLimitError):
        tiny.embeddings.create(model="text-embed", input="y" * 200, encoding_format="float")


def test_difficulty_scored_requests_are_recorded_for_the_router(gw, client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Prove that there are infinitely many primes."}],
        extra_headers={"x-request-id": "req-decision-1"})
    assert raw.headers["x-gateway-difficulty"]
    rows = []
    for _ in range(50):  # recorded after the reply, off the response path
        export = httpx.get(gw.root_url + "/admin/router/export", params={"tenant": "dev", "labelled": "false"},
                           headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=5)
        rows = [json.loads(line) for line in export.text.splitlines() if "req-decision-1" in line]
        if rows:
            break
        time.sleep(0.1)
    assert rows and rows[0]["target"] == "stub-openai" and 0.0 <= rows[0]["score"] <= 1.0
    assert rows[0]["prompt_tokens"] > 0 and rows[0]["completion_tokens"] > 0


CUSTOM_TOOL = {"type": "custom", "custom": {"name": "apply_patch", "description": "Apply a patch",
                                            "format": {"type": "grammar", "grammar": {"syntax": "lark",
                                                                                      "definition": "start: /.+/"}}}}


def test_chat_custom_tools_reach_openai_targets_verbatim_and_are_refused_clearly_elsewhere(client, openai_stub):
    history = [{"role": "user", "content": "patch a.py"},
               {"role": "assistant", "content": None,
                "tool_calls": [{"id": "call_0", "type": "custom", "custom": {"name": "apply_patch", "input": "*** Begin"}}]},
               {"role": "tool", "tool_call_id": "call_0", "content": "done"},
               {"role": "user", "content": "now b.py"}]
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "custom", "custom": {"name": "apply_patch"}}]}}
    completion = client.chat.completions.create(model="gpt-test", messages=history, tools=[CUSTOM_TOOL], tool_choice=choice)
    call = completion.choices[0].message.tool_calls[0]
    assert (call.type, call.custom.name, call.custom.input) == ("custom", "apply_patch", "now b.py")
    sent = openai_stub.control.requests[-1]
    assert sent["tools"] == [CUSTOM_TOOL] and sent["tool_choice"] == choice and sent["messages"][1] == history[1]

    with pytest.raises(openai.BadRequestError) as caught:  # the member its type names is missing
        client.chat.completions.create(model="gpt-test", messages=history[:1], tools=[{"type": "custom"}])
    assert caught.value.body["param"] == "tools[0].custom"
    broken_call = [history[0], {"role": "assistant", "content": None, "tool_calls": [{"id": "call_0", "type": "custom"}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-test", messages=broken_call)
    assert caught.value.body["param"] == "messages[1].tool_calls[0].custom"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-test", messages=history[:1], tools=[CUSTOM_TOOL],
                                       tool_choice={"type": "allowed_tools"})
    assert caught.value.body["param"] == "tool_choice.allowed_tools"
    with pytest.raises(openai.BadRequestError) as caught:  # an Anthropic target takes function tools only
        client.chat.completions.create(model="claude-only", messages=history[:1], tools=[CUSTOM_TOOL])
    assert "custom" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="claude-only", messages=history, max_tokens=8)
    assert "custom" in caught.value.message
