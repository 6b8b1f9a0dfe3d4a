"""The Anthropic adapter against a real HTTP stub of the Messages API, through the real SDK.

Every test goes over loopback: the official `anthropic` SDK builds and sends the request, the stub
validates it the way the live API does (and records it), and the adapter's OpenAI-shaped output is
parsed with the `openai` SDK's own models, so "compatible" means "the OpenAI SDK accepts it".
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from policies.schema import TargetSpec
from protocols.anthropic_chat import DEFAULT_MAX_TOKENS, DEFAULT_MIN_CACHE_CHARS
from protocols.translate import ChatToMessages, Hints
from providers.anthropic import AnthropicProvider
from providers.translated import Translated
from providers.base import (
    AuthFailed,
    BadRequest,
    ContextTooLong,
    Provider,
    ProviderError,
    ProviderRequest,
    RateLimited,
    Timeout,
    Timeouts,
    Unavailable,
)
from tests.stubs.anthropic_stub import Reply, StubController, start_anthropic_stub
from tests.stubs.anthropic_stub import ToolUse as ReplyTool

KEY_ENV = "GATEWAY_TEST_ANTHROPIC_KEY"
API_KEY = "sk-ant-test-key"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def stub_server() -> Iterator[tuple[str, StubController]]:
    with start_anthropic_stub(api_key=API_KEY) as served:
        yield served


@pytest.fixture
def stub(stub_server: tuple[str, StubController]) -> StubController:
    stub_server[1].reset()
    return stub_server[1]


def chat_provider(name: str, spec: TargetSpec, *, min_cache_chars: int = DEFAULT_MIN_CACHE_CHARS,
                  http_client: httpx2.AsyncClient | None = None) -> Translated:
    """An Anthropic target as an OpenAI chat caller reaches it: through the translator (as the
    router builds it for a chat request), so these tests cover translation and the SDK call."""
    hints = Hints(default_max_tokens=spec.max_output_tokens or DEFAULT_MAX_TOKENS, min_cache_chars=min_cache_chars)
    return Translated(AnthropicProvider(name, spec, http_client), ChatToMessages(), hints)


def make_spec(base_url: str, **overrides: Any) -> TargetSpec:
    fields: dict[str, Any] = {
        "provider": "anthropic",
        "model": "claude-test-1",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "headers": {"x-gateway-team": "platform"},
        **overrides,
    }
    return TargetSpec(**fields)


@pytest.fixture
async def provider(stub_server: tuple[str, StubController], stub: StubController, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AnthropicProvider]:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    instance = chat_provider("anthropic-main", make_spec(stub_server[0]))
    yield instance
    await instance.inner.aclose()


def chat(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-test-1", "messages": messages, **fields}


def request(body: dict[str, Any], **fields: Any) -> ProviderRequest:
    return ProviderRequest(body=body, request_id="req-1", **fields)


async def complete(provider: AnthropicProvider, body: dict[str, Any], **fields: Any) -> ChatCompletion:
    result = await provider.complete(request(body, **fields))
    parsed = ChatCompletion.model_validate_json(result.body)
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (result.usage.prompt_tokens, result.usage.completion_tokens)
    return parsed


async def stream_chunks(provider: AnthropicProvider, body: dict[str, Any], **fields: Any) -> list[ChatCompletionChunk]:
    return [ChatCompletionChunk.model_validate_json(payload)
            async for payload in provider.stream(request({**body, "stream": True}, **fields))]


# ---- request translation -----------------------------------------------------------------------

async def test_system_and_multi_turn_translation(provider: AnthropicProvider, stub: StubController) -> None:
    body = chat([
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "first part"},
        {"role": "user", "content": [{"type": "text", "text": "second part"}]},
    ])
    result = await complete(provider, body)

    sent = stub.last_body
    assert sent["model"] == "claude-test-1"
    assert sent["system"] == [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in English."}]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][2]["content"] == [{"type": "text", "text": "first part"}, {"type": "text", "text": "second part"}]
    assert sent["max_tokens"] == 4096
    assert "stream" not in sent

    assert result.object == "chat.completion"
    assert result.model == "claude-test-1"
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == "first part second part"
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].message.tool_calls is None


async def test_sampling_fields_translate_and_unknown_fields_are_dropped(
    provider: AnthropicProvider, stub: StubController
) -> None:
    body = chat(
        [{"role": "user", "content": "Hi"}],
        max_completion_tokens=321, max_tokens=999, temperature=1.7, top_p=0.9, stop="###", user="tenant-42",
        frequency_penalty=0.5, logit_bias={"1": 2}, seed=7, stream_options={"include_usage": True},
        some_vendor_extension={"x": 1}, n=1,
    )
    await complete(provider, body)
    sent = stub.last_body
    assert sent["max_tokens"] == 321  # max_completion_tokens wins over the legacy field
    assert sent["temperature"] == 1.0  # OpenAI's 0..2 clamped into Anthropic's 0..1
    assert sent["top_p"] == 0.9
    assert sent["stop_sequences"] == ["###"]
    assert sent["metadata"] == {"user_id": "tenant-42"}
    assert set(sent) == {"model", "messages", "max_tokens", "temperature", "top_p", "stop_sequences", "metadata"}
    # the header configured on the target and the SDK's version header both travel
    headers = stub.requests[-1].headers
    assert headers["x-gateway-team"] == "platform"
    assert headers["anthropic-version"]
    assert API_KEY in (headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer "))


async def test_max_tokens_defaults_to_target_limit(stub_server: tuple[str, StubController], stub: StubController,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    limited = chat_provider("anthropic-small", make_spec(stub_server[0], max_output_tokens=777))
    try:
        await complete(limited, chat([{"role": "user", "content": "Hi"}]))
    finally:
        await limited.inner.aclose()
    assert stub.last_body["max_tokens"] == 777


async def test_n_above_one_is_refused_without_a_call(provider: AnthropicProvider, stub: StubController) -> None:
    with pytest.raises(BadRequest) as caught:
        await provider.complete(request(chat([{"role": "user", "content": "Hi"}], n=3)))
    assert caught.value.target == "anthropic-main"
    assert stub.call_count == 0


async def test_images_become_image_blocks(provider: AnthropicProvider, stub: StubController) -> None:
    body = chat([{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}])
    await complete(provider, body)
    blocks = stub.last_body["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


async def test_image_that_is_not_base64_is_a_bad_request(provider: AnthropicProvider, stub: StubController) -> None:
    body = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]}])
    with pytest.raises(BadRequest):
        await provider.complete(request(body))
    assert stub.call_count == 0


async def test_response_format_json_schema_becomes_a_system_instruction(
    provider: AnthropicProvider, stub: StubController
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    body = chat([{"role": "system", "content": "Be exact."}, {"role": "user", "content": "2+2?"}],
                response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    await complete(provider, body)
    system = stub.last_body["system"]
    assert system[0] == {"type": "text", "text": "Be exact."}
    assert "JSON" in system[-1]["text"] and json.dumps(schema) in system[-1]["text"]
    assert "response_format" not in stub.last_body


# ---- tools ---------------------------------------------------------------------------------------

async def test_tool_round_trip(provider: AnthropicProvider, stub: StubController) -> None:
    stub.reply_tool_use("get_weather", {"city": "Paris", "units": ["C"]}, id="toolu_01", text="Let me check.")
    first = await complete(provider, chat([{"role": "user", "content": "Weather in Paris?"}],
                                          tools=[WEATHER_TOOL], tool_choice="auto"))
    sent = stub.last_body
    assert sent["tools"] == [{
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": WEATHER_TOOL["function"]["parameters"],
    }]
    assert sent["tool_choice"] == {"type": "auto"}

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls or []
    assert call.id == "toolu_01" and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "units": ["C"]}

    follow_up = chat([
        {"role": "user", "content": "Weather in Paris?"},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "toolu_01", "content": "18 degrees and sunny"},
    ], tools=[WEATHER_TOOL])
    second = await complete(provider, follow_up)
    messages = stub.last_body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "units": ["C"]}},
    ]
    assert messages[2]["content"] == [{
        "type": "tool_result", "tool_use_id": "toolu_01",
        "content": [{"type": "text", "text": "18 degrees and sunny"}],
    }]
    assert second.choices[0].message.content == "18 degrees and sunny"  # the stub echoes the tool result
    assert second.choices[0].finish_reason == "stop"


async def test_parallel_tool_results_share_one_user_turn(provider: AnthropicProvider, stub: StubController) -> None:
    calls = [
        {"id": f"toolu_{i}", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
        for i, city in enumerate(["Paris", "Oslo"])
    ]
    body = chat([
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "toolu_0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "snow"},
        {"role": "user", "content": "Summarise."},
    ], tools=[WEATHER_TOOL])
    await complete(provider, body)
    messages = stub.last_body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert [b["type"] for b in messages[2]["content"]] == ["tool_result", "tool_result", "text"]
    assert [b["type"] for b in messages[1]["content"]] == ["tool_use", "tool_use"]


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
async def test_tool_choice_mapping(provider: AnthropicProvider, stub: StubController, tool_choice: Any,
                                   parallel: bool | None, expected: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    await complete(provider, chat([{"role": "user", "content": "Hi"}], **fields))
    assert stub.last_body["tool_choice"] == expected


# ---- response translation: stop reasons and usage -------------------------------------------------

@pytest.mark.parametrize(
    ("fields", "reply", "finish_reason"),
    [
        ({}, Reply(text="all done"), "stop"),
        ({"stop": ["STOP"]}, Reply(text="one two STOP three"), "stop"),
        ({"max_tokens": 3}, Reply(text="one two three four five"), "length"),
        ({}, Reply(text="", stop_reason="refusal"), "content_filter"),
        ({"tools": [WEATHER_TOOL]}, Reply(text="", tool_uses=[]), "stop"),
    ],
)
async def test_stop_reasons(provider: AnthropicProvider, stub: StubController, fields: dict[str, Any],
                            reply: Reply, finish_reason: str) -> None:
    stub.enqueue(reply)
    result = await complete(provider, chat([{"role": "user", "content": "go"}], **fields))
    assert result.choices[0].finish_reason == finish_reason
    if "stop" in fields:
        assert result.choices[0].message.content == "one two "
    if "max_tokens" in fields:
        assert result.choices[0].message.content == "one two three"


async def test_usage_counts_cache_reads_and_writes_as_prompt_tokens(provider: AnthropicProvider, stub: StubController) -> None:
    usage = {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 7}
    stub.enqueue(Reply(text="cached answer", usage=usage), Reply(text="cached answer", usage=usage))
    body = chat([{"role": "user", "content": "Hi"}])

    result = await provider.complete(request(body))
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.cached_tokens) == (115, 7, 100)
    wire = ChatCompletion.model_validate_json(result.body).usage
    assert wire is not None and wire.total_tokens == 122
    assert wire.prompt_tokens_details is not None and wire.prompt_tokens_details.cached_tokens == 100

    chunks = await stream_chunks(provider, body)
    final = chunks[-1].usage
    assert final is not None and (final.prompt_tokens, final.completion_tokens, final.total_tokens) == (115, 7, 122)
    assert final.prompt_tokens_details is not None and final.prompt_tokens_details.cached_tokens == 100


# ---- streaming ------------------------------------------------------------------------------------

async def test_stream_text_becomes_openai_chunks(provider: AnthropicProvider, stub: StubController) -> None:
    stub.reply_text("The quick brown fox jumps over the lazy dog", chunk_size=4)
    chunks = await stream_chunks(provider, chat([{"role": "user", "content": "Tell me"}]))

    assert stub.last_body["stream"] is True
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(text_chunks) > 5  # really incremental, not one blob
    assert "".join(c.choices[0].delta.content or "" for c in text_chunks) == "The quick brown fox jumps over the lazy dog"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "stop"
    assert chunks[-2] is finishing[0]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9 and chunks[-1].usage.prompt_tokens > 0


async def test_streamed_tool_calls_reassemble_into_json(provider: AnthropicProvider, stub: StubController) -> None:
    arguments = {"city": "São Paulo", "days": 3, "detail": {"hourly": True, "fields": ["temp", "rain"]}}
    stub.enqueue(Reply(text="Checking both.", chunk_size=3, tool_uses=[
        ReplyTool("get_weather", arguments, "toolu_a"), ReplyTool("get_weather", {"city": "Oslo"}, "toolu_b"),
    ]))
    chunks = await stream_chunks(provider, chat([{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]))

    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            entry["name"] += (delta.function.name if delta.function else None) or ""
            entry["arguments"] += (delta.function.arguments if delta.function else None) or ""
    assert sorted(calls) == [0, 1]
    assert calls[0]["id"] == "toolu_a" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == arguments
    assert json.loads(calls[1]["arguments"]) == {"city": "Oslo"}
    argument_chunks = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls
                       and not c.choices[0].delta.tool_calls[0].id]
    assert len(argument_chunks) > 3  # fragments were streamed as they came
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Checking both."


async def test_stream_tool_call_without_arguments_still_yields_a_json_object(
    provider: AnthropicProvider, stub: StubController
) -> None:
    stub.enqueue(Reply(text="", tool_uses=[ReplyTool("list_cities", {}, "toolu_empty")]))
    tool = {"type": "function", "function": {"name": "list_cities", "parameters": {"type": "object", "properties": {}}}}
    chunks = await stream_chunks(provider, chat([{"role": "user", "content": "Cities?"}], tools=[tool]))
    arguments = "".join(
        (d.function.arguments or "") for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or []) if d.function
    )
    assert json.loads(arguments) == {}


# ---- errors -----------------------------------------------------------------------------------------

ERROR_CASES = [
    (429, "Number of request tokens has exceeded your per-minute rate limit", RateLimited),
    (529, "Overloaded", Unavailable),
    (500, "Internal server error", Unavailable),
    (401, "invalid x-api-key", AuthFailed),
    (403, "Your API key does not have permission", AuthFailed),
    (400, "prompt is too long: 250000 tokens > 200000 maximum", ContextTooLong),
    (400, "messages.0.content.0.type: Field required", BadRequest),
]


@pytest.mark.parametrize(("status", "message", "expected"), ERROR_CASES)
async def test_error_statuses_map_to_the_taxonomy(provider: AnthropicProvider, stub: StubController, status: int,
                                                  message: str, expected: type[ProviderError]) -> None:
    stub.fail_next(1, status, message, retry_after=7 if status == 429 else None)
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request(chat([{"role": "user", "content": "Hi"}])))
    error = caught.value
    assert type(error) is expected
    assert error.target == "anthropic-main" and error.upstream_status == status
    assert message in error.message
    assert error.retry_after == (7.0 if status == 429 else None)
    assert stub.call_count == 1  # max_retries=0: the executor, not the SDK, decides on retries


@pytest.mark.parametrize(("status", "message", "expected"), ERROR_CASES)
async def test_stream_refusal_raises_before_anything_is_yielded(provider: AnthropicProvider, stub: StubController,
                                                                status: int, message: str,
                                                                expected: type[ProviderError]) -> None:
    stub.fail_next(1, status, message, retry_after=3 if status == 429 else None)
    chunks = provider.stream(request(chat([{"role": "user", "content": "Hi"}], stream=True)))
    with pytest.raises(ProviderError) as caught:
        await anext(chunks)  # the very first pull raises: not one byte reached the caller
    assert type(caught.value) is expected
    if status == 429:
        assert caught.value.retry_after == 3.0


async def test_wrong_api_key_is_auth_failed(stub_server: tuple[str, StubController], stub: StubController,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-wrong")
    wrong = chat_provider("anthropic-wrong", make_spec(stub_server[0]))
    try:
        with pytest.raises(AuthFailed):
            await wrong.complete(request(chat([{"role": "user", "content": "Hi"}])))
    finally:
        await wrong.inner.aclose()
    assert stub.requests[-1].path == "/v1/messages"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("streamed", [False, True])
async def test_connection_refused_is_unavailable(monkeypatch: pytest.MonkeyPatch, streamed: bool) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    dead = chat_provider("anthropic-dead", make_spec(f"http://127.0.0.1:{_free_port()}"))
    try:
        with pytest.raises(Unavailable):
            if streamed:
                await anext(dead.stream(request(chat([{"role": "user", "content": "Hi"}], stream=True))))
            else:
                await dead.complete(request(chat([{"role": "user", "content": "Hi"}])))
    finally:
        await dead.inner.aclose()


@pytest.mark.parametrize(("error_type", "expected"), [("overloaded_error", Unavailable), ("api_error", Unavailable),
                                                      ("rate_limit_error", RateLimited)])
async def test_error_event_mid_stream_raises(provider: AnthropicProvider, stub: StubController, error_type: str,
                                             expected: type[ProviderError]) -> None:
    stub.error_mid_stream(error_type, after=2)
    received: list[ChatCompletionChunk] = []
    with pytest.raises(ProviderError) as caught:
        async for payload in provider.stream(request(chat([{"role": "user", "content": "Hi"}], stream=True))):
            received.append(ChatCompletionChunk.model_validate_json(payload))
    assert type(caught.value) is expected
    assert len(received) == 3  # role chunk + the two deltas sent before the error event
    assert all(not c.choices or c.choices[0].finish_reason is None for c in received)


async def test_stream_cut_without_message_stop_raises(provider: AnthropicProvider, stub: StubController) -> None:
    stub.enqueue(Reply(text="this answer never finishes", chunk_size=4, end_early_after=2))
    received = []
    with pytest.raises(Unavailable, match="message_stop"):
        async for payload in provider.stream(request(chat([{"role": "user", "content": "Hi"}], stream=True))):
            received.append(payload)
    assert len(received) == 3


SHORT = Timeouts(connect=1.0, first_token=0.3, total=0.6)


async def test_hang_times_out(provider: AnthropicProvider, stub: StubController) -> None:
    stub.hang_next(3.0)
    started = time.monotonic()
    with pytest.raises(Timeout):
        await provider.complete(request(chat([{"role": "user", "content": "Hi"}]), timeouts=SHORT))
    assert time.monotonic() - started < 2.0


async def test_stream_hang_times_out_before_first_yield(provider: AnthropicProvider, stub: StubController) -> None:
    stub.hang_next(3.0)
    started = time.monotonic()
    with pytest.raises(Timeout):
        await anext(provider.stream(request(chat([{"role": "user", "content": "Hi"}], stream=True), timeouts=SHORT)))
    assert time.monotonic() - started < 2.0


async def test_stream_stalling_after_first_byte_hits_total_timeout(provider: AnthropicProvider, stub: StubController) -> None:
    stub.enqueue(Reply(text="slow words arriving one by one", chunk_size=5, event_delay=0.2))
    received = []
    timeouts = Timeouts(connect=1.0, first_token=1.0, total=1.0)
    with pytest.raises(Timeout):
        async for payload in provider.stream(request(chat([{"role": "user", "content": "Hi"}], stream=True), timeouts=timeouts)):
            received.append(payload)
    assert received  # it did start; the deadline still applies to the whole stream


# ---- prompt caching hints -----------------------------------------------------------------------------

LONG_SYSTEM = "You are a meticulous assistant for the platform team. " * 100  # ≈ 5,400 characters


def cacheable_body(question: str) -> dict[str, Any]:
    return chat([
        {"role": "system", "content": "Rules part one."},
        {"role": "system", "content": LONG_SYSTEM},
        {"role": "user", "content": question},
    ], tools=[WEATHER_TOOL, {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "name": "get_forecast"}}])


async def test_cache_control_marks_the_static_prefix(provider: AnthropicProvider, stub: StubController) -> None:
    first = await provider.complete(request(cacheable_body("first question"), prefix_key="pfx-1"))
    sent = stub.last_body
    assert [("cache_control" in b) for b in sent["system"]] == [False, True]
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert [("cache_control" in t) for t in sent["tools"]] == [False, True]
    assert not any("cache_control" in block for m in sent["messages"] for block in m["content"])
    assert first.usage.cached_tokens == 0

    second = await provider.complete(request(cacheable_body("another question"), prefix_key="pfx-1"))
    assert second.usage.cached_tokens > 1000  # the stub served the marked prefix from its cache
    assert second.usage.prompt_tokens >= second.usage.cached_tokens


@pytest.mark.parametrize("case", ["no prefix key", "prefix too short"])
async def test_cache_control_is_omitted(provider: AnthropicProvider, stub: StubController, case: str) -> None:
    if case == "no prefix key":
        body, prefix_key = cacheable_body("q"), None
    else:
        body, prefix_key = chat([{"role": "system", "content": "Short."}, {"role": "user", "content": "q"}],
                                tools=[WEATHER_TOOL]), "pfx-2"
    result = await provider.complete(request(body, prefix_key=prefix_key))
    assert "cache_control" not in json.dumps(stub.last_body)
    assert result.usage.cached_tokens == 0


async def test_cache_threshold_is_configurable(stub_server: tuple[str, StubController], stub: StubController,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    eager = chat_provider("anthropic-eager", make_spec(stub_server[0]), min_cache_chars=10)
    try:
        await eager.complete(request(chat([{"role": "system", "content": "Short system prompt."},
                                           {"role": "user", "content": "q"}]), prefix_key="pfx-3"))
    finally:
        await eager.inner.aclose()
    assert stub.last_body["system"][-1]["cache_control"] == {"type": "ephemeral"}


# ---- lifecycle ---------------------------------------------------------------------------------------

async def test_provider_protocol_health_and_missing_key(stub_server: tuple[str, StubController], stub: StubController,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    configured = chat_provider("anthropic-ok", make_spec(stub_server[0]))
    assert isinstance(configured, Provider)
    assert (await configured.health()).ok
    await configured.inner.aclose()

    monkeypatch.delenv(KEY_ENV)
    unconfigured = chat_provider("anthropic-nokey", make_spec(stub_server[0]))
    health = await unconfigured.health()
    assert not health.ok and KEY_ENV in health.detail
    with pytest.raises(AuthFailed):
        await unconfigured.complete(request(chat([{"role": "user", "content": "Hi"}])))
    with pytest.raises(AuthFailed):
        await anext(unconfigured.stream(request(chat([{"role": "user", "content": "Hi"}], stream=True))))
    await unconfigured.inner.aclose()
    assert stub.call_count == 0  # health and refusals spent nothing upstream


async def test_shared_http_client_is_left_open(stub_server: tuple[str, StubController], stub: StubController,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    async with httpx2.AsyncClient() as shared:
        first = chat_provider("a", make_spec(stub_server[0]), http_client=shared)
        second = chat_provider("b", make_spec(stub_server[0]), http_client=shared)
        results = await asyncio.gather(*[
            p.complete(request(chat([{"role": "user", "content": f"hello {i}"}]))) for i, p in enumerate([first, second] * 3)
        ])
        await first.inner.aclose()
        assert not shared.is_closed
        await second.complete(request(chat([{"role": "user", "content": "still works"}])))
        await second.inner.aclose()
    assert sorted(json.loads(r.body)["choices"][0]["message"]["content"] for r in results)[0] == "hello 0"


async def test_early_consumer_exit_closes_the_upstream_stream(provider: AnthropicProvider, stub: StubController) -> None:
    stub.reply_text("many words " * 50, chunk_size=3)
    chunks = provider.stream(request(chat([{"role": "user", "content": "Hi"}], stream=True)))
    await anext(chunks)
    await anext(chunks)
    await chunks.aclose()  # the caller disconnected: must not hang or raise
    result = await provider.complete(request(chat([{"role": "user", "content": "next"}])))
    assert json.loads(result.body)["choices"][0]["message"]["content"] == "next"


# ---- the stub itself is strict enough to catch translation mistakes ----------------------------------

async def test_stub_rejects_what_the_live_api_rejects(stub_server: tuple[str, StubController], stub: StubController) -> None:
    client = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=stub_server[0], max_retries=0)
    try:
        bad_requests = [
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            {"messages": [{"role": "system", "content": "a"}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            {"messages": [{"role": "user", "content": "a"}], "extra_body": {"frequency_penalty": 1}},
            {"messages": [{"role": "user", "content": "a"}], "extra_body": {"temperature": 1.5}},
            {"messages": [{"role": "user", "content": "a"},
                          {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                          {"role": "user", "content": "no result"}]},
        ]
        for fields in bad_requests:
            with pytest.raises(anthropic.BadRequestError):
                await client.messages.create(model="m", max_tokens=10, **fields)
    finally:
        await client.close()

