"""The official `openai` SDK against a real gateway process, over a real OpenAI-protocol upstream."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello gateway"}]


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.base_url, api_key=gateway.dev_key, max_retries=0)


def test_non_streamed_completion_with_usage_and_headers(client, openai_stub):
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello gateway"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens == 3
    assert raw.headers["x-gateway-target"] == "stub-openai"
    assert raw.headers["x-request-id"].startswith("req_")
    # The public model name was mapped to the upstream model, and the upstream key was used.
    assert openai_stub.control.requests[-1]["model"] == "gpt-4o-mini"


def test_request_id_from_caller_is_kept(client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, extra_headers={"x-request-id": "trace-abc.123"}
    )
    assert raw.headers["x-request-id"] == "trace-abc.123"


def test_streamed_completion_with_usage(client):
    stream = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello gateway"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_stream_without_include_usage_hides_the_usage_chunk(client, openai_stub):
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks), "no usage-only chunk for a caller that did not ask"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello gateway"
    # ...but the gateway asked the upstream for usage, to settle budgets on real numbers.
    assert openai_stub.control.requests[-1]["stream_options"] == {"include_usage": True}


def test_stream_raw_sse_ends_with_done(gateway):
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {gateway.dev_key}"},
        json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_tools_round_trip(client):
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Look up",
                                                "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}]
    first = client.chat.completions.create(model="gpt-test", messages=MESSAGES, tools=tools, tool_choice="auto")
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"text": "hello gateway"}
    follow = client.chat.completions.create(
        model="gpt-test",
        tools=tools,
        messages=MESSAGES + [first.choices[0].message.model_dump(exclude_none=True),
                             {"role": "tool", "tool_call_id": call.id, "content": "42"}],
    )
    assert follow.choices[0].message.content == "tool said: 42"


def test_streamed_tool_call_reassembles(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, tools=tools, stream=True))
    args = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or []))
    assert json.loads(args) == {"text": "hello gateway"}


def test_json_mode_and_sampling_parameters_reach_upstream(client, openai_stub):
    completion = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, response_format={"type": "json_object"},
        temperature=0.2, top_p=0.9, seed=7, stop=["\n\n"], max_completion_tokens=50, user="u-1",
        metadata={"team": "search"},
    )
    assert json.loads(completion.choices[0].message.content) == {"echo": "hello gateway"}
    sent = openai_stub.control.requests[-1]
    assert sent["response_format"] == {"type": "json_object"}
    assert (sent["temperature"], sent["top_p"], sent["seed"], sent["stop"]) == (0.2, 0.9, 7, ["\n\n"])
    assert sent["max_completion_tokens"] == 50 and sent["user"] == "u-1" and sent["metadata"] == {"team": "search"}


def test_unknown_fields_pass_through_to_openai_compatible_upstreams(client, openai_stub):
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"vendor_knob": {"a": 1}})
    assert openai_stub.control.requests[-1]["vendor_knob"] == {"a": 1}


def test_models_health_and_readiness(client, gateway):
    assert [m.id for m in client.models.list()] == ["gpt-test"]
    assert httpx.get(gateway.root_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.root_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


@pytest.mark.parametrize(
    "key, exception",
    [("sk-wrong", openai.AuthenticationError), ("two words", openai.AuthenticationError)],
)
def test_bad_keys_are_401(gateway, key, exception):
    bad = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with pytest.raises(exception) as info:
        bad.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"


def test_missing_key_is_401_and_x_api_key_works(gateway):
    response = httpx.post(gateway.base_url + "/chat/completions", json={"model": "gpt-test", "messages": MESSAGES})
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    assert response.headers["x-request-id"].startswith("req_") and response.headers["x-gateway-target"] == "none"
    response = httpx.post(gateway.base_url + "/chat/completions", headers={"x-api-key": gateway.dev_key},
                          json={"model": "gpt-test", "messages": MESSAGES})
    assert response.status_code == 200


def test_sdk_exception_classes(client, openai_stub):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=-1)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=5000)
    assert "maximum is 1000" in info.value.message
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x" * 300_000}])
    assert info.value.status_code == 413
    openai_stub.control.fail_next(2, status=429, message="slow down", retry_after=3)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "3"
    openai_stub.control.fail_always(status=500)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.status_code == 503 and info.value.body["code"] == "all_targets_failed"
    assert info.value.body["details"][0]["target"] == "stub-openai"
    headers = info.value.response.headers
    assert (headers["x-gateway-target"], headers["x-gateway-fallbacks"]) == ("none", "stub-openai")
    assert headers["x-request-id"].startswith("req_")


def test_retryable_error_is_retried_on_the_same_target(client, openai_stub):
    openai_stub.control.fail_next(1, status=502)
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "echo: hello gateway"
    assert "x-gateway-fallbacks" not in raw.headers
    assert len(openai_stub.control.requests) == 2


def test_upstream_bad_request_is_not_retried(client, openai_stub):
    openai_stub.control.fail_next(1, status=400, message="bad tool schema")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert "bad tool schema" in info.value.message
    assert len(openai_stub.control.requests) == 1


def test_stream_cut_mid_way_ends_with_an_error_event(client, openai_stub):
    openai_stub.control.reply = "one two three four five six"
    openai_stub.control.fail_next(1, status=200, cut_after_chunks=2)
    stream = client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "one two"
    assert "stub-openai" in str(info.value.message)


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"model": "gpt-test"}', 400, "invalid_request"),
        (b'{"model": "gpt-test", "messages": []}', 400, "invalid_request"),
        (b'{"model": "gpt-test", "messages": "hi"}', 400, "invalid_request"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', 400, "invalid_request"),
        (b'{"model": "gpt-test", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "invalid_request"),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}', 400, "invalid_request"),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "invalid_request"),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "n": 100}', 400, "invalid_value"),
        (b"", 400, "invalid_json"),
    ],
)
def test_bad_input_is_a_clear_4xx(gateway, body, status, code):
    response = httpx.post(gateway.base_url + "/chat/completions", content=body, timeout=5,
                          headers={"authorization": f"Bearer {gateway.dev_key}", "content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["type"] == "invalid_request_error"


def test_too_many_messages_and_oversize_body(gateway):
    headers = {"authorization": f"Bearer {gateway.dev_key}"}
    many = [{"role": "user", "content": "x"}] * 51
    response = httpx.post(gateway.base_url + "/chat/completions", headers=headers, json={"model": "gpt-test", "messages": many})
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_messages"
    big = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "' + b"y" * 250_000 + b'"}]}'
    response = httpx.post(gateway.base_url + "/chat/completions", headers=headers, content=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_unknown_paths_and_methods_answer_in_openai_error_json(gateway):
    response = httpx.get(gateway.base_url + "/nope")
    assert response.status_code == 404 and "error" in response.json()
    response = httpx.get(gateway.base_url + "/chat/completions")
    assert response.status_code == 405 and "error" in response.json()


def test_failover_to_the_next_target(tmp_path, openai_stub):
    from tests.stubs.openai_stub import OpenAIStub, StubControl

    with OpenAIStub(StubControl(reply="from the fallback")) as fallback:
        policy = write_policy(tmp_path, f"""
            targets:
              primary:
                provider: openai
                model: gpt-4o
                base_url: {openai_stub.base_url}
                api_key_env: STUB_OPENAI_KEY
              backup:
                provider: selfhost
                model: local-model
                base_url: {fallback.base_url}
            models:
              gpt-test: {{targets: [primary, backup]}}
        """)
        openai_stub.control.fail_always(status=503)
        with GatewayProcess(policy) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)
            raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
            assert raw.parse().choices[0].message.content == "from the fallback"
            assert raw.headers["x-gateway-target"] == "backup"
            assert raw.headers["x-gateway-fallbacks"] == "primary"
            chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from the fallback"
            assert fallback.control.requests[-1]["model"] == "local-model"


def test_openai_passthrough_transport(tmp_path, openai_stub):
    """`transport: passthrough` forwards bytes with the same key, hints and error mapping as the SDK."""
    policy = write_policy(tmp_path, f"""
        targets:
          fast-openai:
            provider: openai
            transport: passthrough
            model: gpt-4o-mini
            base_url: {openai_stub.base_url}
            api_key_env: STUB_OPENAI_KEY
        models:
          gpt-fast: {{targets: [fast-openai], cache: {{prompt_cache_min_tokens: 256}}}}
    """)
    with GatewayProcess(policy) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)
        assert client.chat.completions.create(model="gpt-fast", messages=MESSAGES).choices[0].message.content == \
            "echo: hello gateway"
        assert openai_stub.control.headers[-1]["Authorization"] == "Bearer sk-upstream"
        chunks = list(client.chat.completions.create(model="gpt-fast", messages=MESSAGES, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello gateway"
        long_system = [{"role": "system", "content": "Rules. " * 300}, {"role": "user", "content": "q"}]
        client.chat.completions.create(model="gpt-fast", messages=long_system)
        assert openai_stub.control.requests[-1]["prompt_cache_key"].startswith("gw-")
        openai_stub.control.fail_next(2, status=429, message="slow down", retry_after=2)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-fast", messages=MESSAGES)
