"""The Anthropic Messages API inbound: the official `anthropic` SDK (and the npm one) against a real
gateway process, verbatim to an Anthropic stub, translated to an OpenAI stub and the bundled engine."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import anthropic
import httpx
import pytest

from gateway.auth import hash_key
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.anthropic_stub import thinking_signature
from tests.stubs.openai_stub import free_port

KEY_ENV = "GATEWAY_TEST_ANTHROPIC_KEY"
ANTHROPIC_KEY = "sk-ant-upstream"
TINY_KEY = "sk-tiny-messages"
POLICY = """
    targets:
      claude:
        provider: anthropic
        model: claude-upstream-1
        base_url: {anthropic_url}
        api_key_env: {key_env}
        pricing: {{input: 3, cached_input: 0.3, output: 15}}
        timeouts: {{connect: 2, first_token: 5, total: 10}}
      dead-claude:
        provider: anthropic
        model: claude-upstream-1
        base_url: http://127.0.0.1:{dead_port}
        api_key_env: {key_env}
        timeouts: {{connect: 1, first_token: 2, total: 3}}
      claude-pt:
        provider: anthropic
        transport: passthrough
        model: claude-upstream-1
        base_url: {anthropic_url}
        api_key_env: {key_env}
        timeouts: {{connect: 2, first_token: 5, total: 10}}
      stub-openai:
        provider: openai
        model: gpt-4o-mini
        base_url: {openai_url}
        api_key_env: STUB_OPENAI_KEY
        timeouts: {{connect: 2, first_token: 5, total: 10}}
      engine:
        provider: selfhost
        model: tiny-llama
        embedded: {{max_num_seqs: 4, max_model_len: 512}}
        timeouts: {{connect: 5, first_token: 60, total: 120}}
    models:
      claude-sonnet:
        targets: [dead-claude, claude]
        aliases: ["claude-sonnet-*"]
        max_tokens: 4096
      claude-haiku:
        targets: [engine]
        aliases: ["claude-haiku-*", "claude-3-5-haiku-latest"]
        max_tokens: 64
      gpt-via-messages:
        targets: [stub-openai]
      claude-fast:
        targets: [claude-pt]
      claude-then-gpt:
        targets: [claude, stub-openai]
    retry: {{attempts: 1}}
    tenants:
      tiny:
        keys: ["{tiny_hash}"]
        limits: {{tokens_per_day: 40}}
"""
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory, claude_stub, _module_stub):
    text = POLICY.format(anthropic_url=claude_stub.base_url, key_env=KEY_ENV, dead_port=free_port(),
                         openai_url=_module_stub.base_url, tiny_hash=hash_key(TINY_KEY))
    path = write_policy(tmp_path_factory.mktemp("messages"), text)
    with GatewayProcess(path, env={KEY_ENV: ANTHROPIC_KEY}) as proc:
        yield proc


@pytest.fixture
def stub(claude_stub):
    claude_stub.controller.reset()
    return claude_stub.controller


@pytest.fixture
def client(gw):
    return anthropic.Anthropic(base_url=gw.root_url, api_key=gw.dev_key, max_retries=0)


def test_anthropic_target_gets_the_body_verbatim_and_usage_back(client, stub):
    body = {
        "max_tokens": 300,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": "Hello there"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "u-42"},
        "tools": [WEATHER],
        "tool_choice": {"type": "auto"},
    }
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5-20250929", **body, extra_body={"top_k": 5},
                                                   extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    message = raw.parse()
    assert stub.last_body == {**body, "top_k": 5, "model": "claude-upstream-1"}, "only the model name changes"
    assert stub.requests[-1].headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert raw.headers["x-gateway-target"] == "claude" and raw.headers["x-gateway-model"] == "claude-sonnet"
    assert raw.headers["x-gateway-fallbacks"] == "dead-claude"
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.signature == thinking_signature(thinking.thinking)
    assert text.text == "Hello there" and message.usage.input_tokens > 0
    # The signed thinking block goes back unchanged in the next turn (the stub verifies the signature).
    follow = client.messages.create(model="claude-sonnet-4-5", max_tokens=50, thinking=body["thinking"], messages=[
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": [thinking.model_dump(), {"type": "text", "text": text.text}]},
        {"role": "user", "content": "And again"}])
    assert follow.content[-1].text == "And again"


def test_stream_is_relayed_event_for_event(gw, stub):
    request = {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
               "thinking": {"type": "enabled", "budget_tokens": 1024},
               "messages": [{"role": "user", "content": "stream these words please"}]}
    with httpx.stream("POST", gw.root_url + "/v1/messages", json=request, timeout=20,
                      headers={"x-api-key": gw.dev_key, "anthropic-version": "2023-06-01"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert names == [p["type"] for p in payloads]
    assert names[:3] == ["message_start", "ping", "content_block_start"] and names[-2:] == ["message_delta", "message_stop"]
    deltas = [p["delta"]["type"] for p in payloads if p["type"] == "content_block_delta"]
    assert "thinking_delta" in deltas and "signature_delta" in deltas and "text_delta" in deltas


def test_sdk_stream_tool_loop_on_anthropic_and_translated_targets(client, stub, openai_stub):
    for model in ("claude-sonnet-4-5", "gpt-via-messages"):
        stub.reply_tool_use("get_weather", {"city": "Paris"})
        messages = [{"role": "user", "content": "weather in Paris?"}]
        with client.messages.stream(model=model, max_tokens=100, tools=[WEATHER], messages=messages) as stream:
            first = stream.get_final_message()
        assert first.stop_reason == "tool_use", model
        call = next(block for block in first.content if block.type == "tool_use")
        messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
        second = client.messages.create(model=model, max_tokens=100, tools=[WEATHER], messages=messages)
        assert second.stop_reason == "end_turn" and "sunny" in second.content[0].text, model
    sent = openai_stub.control.requests[-1]  # the translated second turn
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.id, "tool-use ids are kept"
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


def test_translation_to_openai_reports_what_was_dropped(client, openai_stub):
    raw = client.messages.with_raw_response.create(
        model="gpt-via-messages", max_tokens=20, system="Be brief.", stop_sequences=["END"], extra_body={"top_k": 3},
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}])
    assert raw.headers["x-gateway-dropped"] == "cache_control,top_k"
    sent = openai_stub.control.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["stop"] == ["END"]
    message = raw.parse()
    assert message.content[0].text == "echo: hi" and message.usage.output_tokens == 2
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="gpt-via-messages", max_tokens=20, messages=[{"role": "user", "content": "x"}],
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "server tool" in caught.value.message
    with pytest.raises(anthropic.BadRequestError) as caught:  # chat upstreams take at most 4
        client.messages.create(model="gpt-via-messages", max_tokens=20, messages=[{"role": "user", "content": "x"}],
                               stop_sequences=["a", "b", "c", "d", "e"])
    assert "stop_sequences" in caught.value.message


def test_claude_code_shaped_session_splits_across_anthropic_and_the_engine(gw, stub):
    client = anthropic.Anthropic(base_url=gw.root_url, auth_token=gw.dev_key, max_retries=0)  # Bearer, as Claude Code can
    system = [{"type": "text", "text": "You are Claude Code. " * 40, "cache_control": {"type": "ephemeral"}}]
    stub.reply_tool_use("get_weather", {"city": "Oslo"})
    messages = [{"role": "user", "content": "check the weather in Oslo"}]
    with client.messages.stream(model="claude-sonnet-4-5-20250929", max_tokens=200, system=system,
                                tools=[WEATHER], messages=messages) as stream:
        turn = stream.get_final_message()
    call = next(b for b in turn.content if b.type == "tool_use")
    messages += [{"role": "assistant", "content": [b.model_dump() for b in turn.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "cold"}]}]
    with client.messages.stream(model="claude-sonnet-4-5-20250929", max_tokens=200, system=system,
                                tools=[WEATHER], messages=messages) as stream:
        final = stream.get_final_message()
    assert "cold" in final.content[0].text
    assert stub.last_body["system"] == system, "cache_control on the system prompt reached Anthropic"
    # The background "haiku" call goes to the bundled engine, translated.
    raw = client.messages.with_raw_response.create(model="claude-3-5-haiku-latest", max_tokens=8,
                                                   messages=[{"role": "user", "content": "title for this chat?"}])
    assert raw.headers["x-gateway-target"] == "engine" and raw.parse().usage.output_tokens == 8
    with client.messages.stream(model="claude-haiku-4-5-20251001", max_tokens=6,
                                messages=[{"role": "user", "content": "summarise"}]) as stream:
        assert stream.get_final_message().stop_reason == "max_tokens"


def test_count_tokens_says_who_counted(gw, client, stub):
    request = {"messages": [{"role": "user", "content": "count me, please"}], "system": "be brief"}
    raw = client.messages.with_raw_response.count_tokens(model="claude-sonnet-4-5", **request)
    assert raw.headers["x-gateway-token-count"] == "upstream" and raw.parse().input_tokens > 0
    assert stub.requests[-1].path == "/v1/messages/count_tokens"
    engine = client.messages.with_raw_response.count_tokens(model="claude-haiku-4-5", **request)
    assert engine.headers["x-gateway-token-count"] == "tokenizer" and engine.parse().input_tokens > 5
    estimate = client.messages.with_raw_response.count_tokens(model="gpt-via-messages", **request)
    assert estimate.headers["x-gateway-token-count"] == "estimate"


def test_errors_in_anthropics_shape(gw, client, stub):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "not_found_error"
    response = httpx.post(gw.root_url + "/v1/messages", json={"model": "claude-sonnet-4-5", "messages": []},
                          headers={"x-api-key": gw.dev_key}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gw.root_url, api_key="sk-wrong", max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    stub.fail_next(2, status=529)
    with pytest.raises(anthropic.OverloadedError):  # every target failed
        client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    tiny = anthropic.Anthropic(base_url=gw.root_url, api_key=TINY_KEY, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as limited:
        tiny.messages.create(model="claude-sonnet-4-5", max_tokens=500, messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers.get("retry-after") and limited.value.body["error"]["type"] == "rate_limit_error"


def test_stream_error_after_the_first_event_is_an_anthropic_error_event(client, stub):
    stub.error_mid_stream("overloaded_error", after=2)
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=50,
                                    messages=[{"role": "user", "content": "a long enough answer to cut"}]) as stream:
            for _ in stream:
                pass
    assert "overloaded" in str(caught.value).lower()


def test_deterministic_requests_are_cached_and_replayed_as_streams(client, stub):
    request = {"model": "claude-sonnet-4-5", "max_tokens": 30, "extra_body": {"temperature": 0},
               "messages": [{"role": "user", "content": "cache this answer"}]}
    first = client.messages.with_raw_response.create(**request)
    second = client.messages.with_raw_response.create(**request)
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    calls = stub.call_count
    with client.messages.stream(**request) as stream:
        replayed = stream.get_final_message()
    assert replayed.content[0].text == first.parse().content[0].text and stub.call_count == calls


def test_anthropic_npm_package(gw, stub):
    js = Path(__file__).parent / "js"
    if shutil.which("node") is None or not (js / "node_modules" / "@anthropic-ai" / "sdk").exists():
        pytest.skip("node or the @anthropic-ai/sdk package is not installed")
    result = subprocess.run(["node", str(js / "anthropic_check.mjs"), gw.root_url, gw.dev_key, "claude-sonnet-4-5"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["text"] == "hello from node" and report["streamed"] == "hello from node"
    assert report["usage"]["input_tokens"] > 0 and report["tokens"] > 0
    assert report["notFound"] == {"cls": "NotFoundError", "status": 404}


def test_vercel_ai_sdk_anthropic_provider(gw, stub, openai_stub):
    """The AI SDK's Anthropic provider (ai + @ai-sdk/anthropic): a tool round on an Anthropic target
    (verbatim), then text and a text stream on an OpenAI target (translated)."""
    js = Path(__file__).parent / "js"
    if shutil.which("node") is None or not (js / "node_modules" / "@ai-sdk" / "anthropic").exists():
        pytest.skip("node or the @ai-sdk/anthropic package is not installed")
    stub.reply_tool_use("get_weather", {"city": "Paris"})
    result = subprocess.run(["node", str(js / "anthropic_ai_sdk_check.mjs"), gw.root_url, gw.dev_key,
                             "claude-sonnet-4-5", "gpt-via-messages"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["toolRanWith"] == "Paris" and report["steps"] == 2 and "sunny in Paris" in report["toolText"]
    tool_result = stub.last_body["messages"][-1]["content"][0]
    assert tool_result["type"] == "tool_result" and "sunny in Paris" in json.dumps(tool_result["content"])
    assert report["text"] == "echo: hello from the ai sdk" and report["streamed"] == "echo: stream from the ai sdk"
    assert report["usage"]["inputTokens"] > 0 and report["streamUsage"]["outputTokens"] > 0
    assert openai_stub.control.requests[-1]["stream"] is True


def test_cache_reads_and_writes_are_priced_at_their_own_rates():
    from policies.schema import Pricing
    from protocols.anthropic_messages import usage_of

    usage = usage_of(json.dumps({"usage": {"input_tokens": 500, "cache_read_input_tokens": 200,
                                           "cache_creation_input_tokens": 300, "output_tokens": 100}}).encode())
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens) == (1000, 200, 300)
    pricing = Pricing(input=3, cached_input=0.3, cache_write=3.75, output=15)
    cost = pricing.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens)
    assert cost == pytest.approx((500 * 3 + 200 * 0.3 + 300 * 3.75 + 100 * 15) / 1e6)


def test_passthrough_transport_is_verbatim_too(client, stub, openai_stub):
    body = {"max_tokens": 60, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral", "ttl": "5m"}}],
            "messages": [{"role": "user", "content": "bytes over the pool"}]}
    message = client.messages.create(model="claude-fast", **body,
                                     extra_headers={"anthropic-beta": "extended-cache-ttl-2025-04-11"})
    assert stub.last_body == {**body, "model": "claude-upstream-1"}
    assert stub.requests[-1].headers["anthropic-beta"] == "extended-cache-ttl-2025-04-11"
    assert message.content[0].type == "thinking" and message.content[-1].text == "bytes over the pool"
    with client.messages.stream(model="claude-fast", **body) as stream:
        assert stream.get_final_message().content[-1].text == "bytes over the pool"
    stub.error_mid_stream("overloaded_error", after=2)
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model="claude-fast", **body) as stream:
            for _ in stream:
                pass


def test_a_stream_that_fails_before_its_first_delta_fails_over_invisibly(gw, stub, openai_stub):
    stub.error_mid_stream("overloaded_error", after=0)  # message_start, ping, block start, then an error
    with httpx.stream("POST", gw.root_url + "/v1/messages", timeout=20,
                      headers={"x-api-key": gw.dev_key, "anthropic-version": "2023-06-01"},
                      json={"model": "claude-then-gpt", "max_tokens": 50, "stream": True,
                            "messages": [{"role": "user", "content": "still answered"}]}) as response:
        assert response.headers["x-gateway-target"] == "stub-openai"
        assert response.headers["x-gateway-fallbacks"] == "claude"
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events].count("message_start") == 1, "the failed attempt's opening never leaked"
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == "echo: still answered" and events[-1]["type"] == "message_stop"


def test_translated_stream_states_the_engines_input_count_in_message_start(client):
    """The bundled engine counts the translated prompt before the stream starts: `message_start`
    carries that count (not 0), and it is the count the stream ends with."""
    request = {"max_tokens": 4, "messages": [{"role": "user", "content": "how many tokens is this prompt?"}]}
    counted = client.messages.count_tokens(model="claude-haiku-4-5", messages=request["messages"]).input_tokens
    events = list(client.messages.create(model="claude-haiku-4-5", stream=True, **request))
    assert events[0].type == "message_start" and events[0].message.usage.input_tokens == counted > 0
    assert next(e for e in events if e.type == "message_delta").usage.input_tokens == counted
