"""Translation fidelity, both directions of every translated path, through the official SDKs.

One gateway process; the `openai` and `anthropic` SDKs call it; the recording stubs (tests/stubs/)
stand in for the upstreams. Paths: Messages → chat, Responses → chat, chat → Messages and the
chain Responses → chat → Messages. For each: what the SDK sent → what the stub received, and what
the stub answered → what the SDK returns, field by field.

The generic scan (`assert_nothing_lost`) runs on every path: every string (and number) the caller
sent reaches the upstream, unless `x-gateway-dropped` or `x-gateway-mapped` names the field it
sits in. Values that are enums translated by meaning (`type`, `role`, `mode`, a string
`tool_choice`, `status`) and the model name are not compared; a `data:` URL counts as arrived when
its media type and payload did; a string holding JSON (tool arguments) is compared by its values.
"""

from __future__ import annotations

import base64
import inspect
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.anthropic_stub import Reply

ANTHROPIC_KEY = "sk-ant-fidelity"
POLICY = """
    targets:
      chat-up:  # a chat-only server (vLLM, an engine): Responses and Messages callers are translated
        provider: selfhost
        model: gpt-upstream
        base_url: {openai_url}
        api_key_env: STUB_OPENAI_KEY
        apis: [openai.chat]
        timeouts: {{connect: 2, first_token: 5, total: 10}}
      claude-up:
        provider: anthropic
        model: claude-upstream
        base_url: {anthropic_url}
        api_key_env: FIDELITY_ANTHROPIC_KEY
        timeouts: {{connect: 2, first_token: 5, total: 10}}
    models:
      via-chat:
        targets: [chat-up]
      via-claude:
        targets: [claude-up]
    retry: {{attempts: 1}}
"""
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfidelity-pixels").decode()
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CLOCK = {"type": "object", "properties": {"zone": {"type": "string"}}}


# ---- the generic scan ------------------------------------------------------------------------------

NOT_COMPARED = frozenset({"type", "role", "model", "mode", "status", "object"})
GATEWAY_SERVED = frozenset({"store", "metadata", "previous_response_id", "stream"})  # Responses: kept by the gateway


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, leaf) for every string and number; a path also holds each object's `type` and
    `name`, so `tool_result.image` or `tools.get_time` can name what sits under them."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            value = json.loads(value)  # tool arguments: compared by their values
        except ValueError:
            pass
    if isinstance(value, dict):
        tag = tuple(v for v in (value.get("type"), value.get("name")) if isinstance(v, str))
        for key, inner in value.items():
            if key not in NOT_COMPARED and not (key == "tool_choice" and isinstance(inner, str)):
                yield from _leaves(inner, path + tag + (key,))
    elif isinstance(value, list):
        for inner in value:
            yield from _leaves(inner, path)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != "":
        yield path, value


def _arrived(value: Any, strings: list[str], numbers: set[float]) -> bool:
    if not isinstance(value, str):
        return float(value) in numbers
    if value.startswith("data:") and "," in value:  # a data: URL travels as media type + payload
        head, payload = value[5:].split(",", 1)
        return _arrived(head.split(";")[0], strings, numbers) and _arrived(payload, strings, numbers)
    return any(value in s for s in strings)


def _named(path: tuple[str, ...], names: list[str]) -> bool:
    """A header name `a.b` covers a leaf whose path has `a` then `b` (in order)."""
    for name in names:
        rest = iter(path)
        if all(part in rest for part in name.split(".")):
            return True
    return False


def assert_nothing_lost(sent: dict[str, Any], received: dict[str, Any], headers: Any) -> list[str]:
    names = [n for h in ("x-gateway-dropped", "x-gateway-mapped") for n in (headers.get(h) or "").split(",") if n]
    upstream = list(_leaves(received))
    strings = [v for _, v in upstream if isinstance(v, str)]
    numbers = {float(v) for _, v in upstream if not isinstance(v, str)}
    lost = [(".".join(path), value) for path, value in _leaves({k: v for k, v in sent.items() if k not in GATEWAY_SERVED})
            if not _arrived(value, strings, numbers) and not _named(path, names)]
    assert lost == [], f"changed without being named (headers: {names})"
    return names


# ---- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw(tmp_path_factory, claude_stub, _module_stub):
    text = POLICY.format(openai_url=_module_stub.base_url, anthropic_url=claude_stub.base_url)
    path = write_policy(tmp_path_factory.mktemp("fidelity"), text)
    with GatewayProcess(path, env={"FIDELITY_ANTHROPIC_KEY": ANTHROPIC_KEY}) as proc:
        yield proc


@pytest.fixture
def claude(claude_stub):
    claude_stub.controller.reset()
    return claude_stub.controller


@pytest.fixture(autouse=True)
def _plain_usage(_module_stub):
    _module_stub.control.usage_prompt_tokens, _module_stub.control.cached_tokens = None, 0


@pytest.fixture
def oa(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)


@pytest.fixture
def ant(gw):
    return anthropic.Anthropic(base_url=gw.root_url, api_key=gw.dev_key, max_retries=0)


# ---- Messages → chat -------------------------------------------------------------------------------

_MESSAGES_PARAMS = frozenset(inspect.signature(anthropic.resources.messages.Messages.create).parameters)


def _messages_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """The SDK's keyword arguments for a body (fields its signature lacks, e.g. `temperature` in
    SDK 2.x, travel in `extra_body`, as on the wire)."""
    extra = {k: v for k, v in body.items() if k not in _MESSAGES_PARAMS}
    return {**{k: v for k, v in body.items() if k in _MESSAGES_PARAMS}, "extra_body": extra}


MESSAGES_REQUEST: dict[str, Any] = {
    "model": "via-chat", "max_tokens": 300, "temperature": 0.3, "top_p": 0.9, "top_k": 5,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "stop_sequences": ["END-OF-ANSWER"], "metadata": {"user_id": "user-7"},
    "tools": [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {
        "forecast": {"type": "string"}}, "required": ["forecast"], "additionalProperties": False}}, "effort": "low"},
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What is on this picture, and the weather?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "document", "title": "Field notes", "source": {"type": "text", "media_type": "text/plain",
                                                                     "data": "Notes: sunny mornings."}}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking Zürich."},
            {"type": "tool_use", "id": "toolu_fid_1", "name": "get_weather", "input": {"city": "Zürich"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_fid_1", "content": [
                {"type": "text", "text": "rain, 12 C"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG[:-4]}}]}]},
    ],
}


def test_messages_to_chat_carries_or_names_every_field(ant, openai_stub):
    openai_stub.control.usage_prompt_tokens, openai_stub.control.cached_tokens = 90, 30
    raw = ant.messages.with_raw_response.create(**_messages_kwargs(MESSAGES_REQUEST))
    message, got = raw.parse(), openai_stub.control.requests[-1]
    names = assert_nothing_lost(MESSAGES_REQUEST, got, raw.headers)
    assert {"tool_result.image", "top_k", "cache_control", "output_config.effort", "document.title"} <= set(names)
    # request, field by field
    assert got["messages"][0] == {"role": "system", "content": "You are terse."}
    assert got["messages"][2]["tool_calls"][0]["id"] == "toolu_fid_1"
    assert got["messages"][3] == {"role": "tool", "tool_call_id": "toolu_fid_1", "content": "rain, 12 C"}
    assert got["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": MESSAGES_REQUEST["output_config"]["format"]["schema"], "strict": True}}
    assert (got["user"], got["stop"], got["parallel_tool_calls"]) == ("user-7", ["END-OF-ANSWER"], False)
    # answer, field by field
    assert message.content[0].text == json.dumps({"echo": "rain, 12 C"})
    assert (message.stop_reason, message.usage.input_tokens, message.usage.cache_read_input_tokens) == ("end_turn", 60, 30)


def test_chat_refusal_reaches_a_messages_caller_plain_and_streamed(ant, openai_stub):
    openai_stub.control.refusal = "I can't help with that request."
    plain = ant.messages.create(model="via-chat", max_tokens=50, messages=[{"role": "user", "content": "do it"}])
    with ant.messages.stream(model="via-chat", max_tokens=50, messages=[{"role": "user", "content": "do it"}]) as s:
        streamed = s.get_final_message()
    for message in (plain, streamed):
        assert message.stop_reason == "refusal"
        assert [b.text for b in message.content] == ["I can't help with that request."]


def test_messages_stream_states_input_tokens_in_message_start(ant, openai_stub):
    openai_stub.control.usage_every_chunk, openai_stub.control.usage_prompt_tokens = True, 123
    events = list(ant.messages.create(model="via-chat", max_tokens=50, stream=True,
                                      messages=[{"role": "user", "content": "count me"}]))
    assert events[0].type == "message_start" and events[0].message.usage.input_tokens == 123


# ---- Responses → chat ------------------------------------------------------------------------------

RESPONSES_REQUEST: dict[str, Any] = {
    "model": "via-chat", "instructions": "Answer in one line.", "max_output_tokens": 200, "temperature": 0.4,
    "top_p": 0.8, "user": "user-9", "text": {"verbosity": "low"},
    "tools": [{"type": "function", "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER},
              {"type": "function", "name": "get_time", "description": "Time in a zone", "parameters": CLOCK}],
    "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]},
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather where this photo was taken?"},
                                     {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "high"}]},
        {"type": "function_call", "call_id": "call_fid_1", "name": "get_weather", "arguments": '{"city": "Zürich"}'},
        {"type": "function_call_output", "call_id": "call_fid_1", "output": [
            {"type": "input_text", "text": "rain, 12 C"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG[:-4]}"}]},
    ],
}


def test_responses_to_chat_carries_or_names_every_field(oa, openai_stub):
    openai_stub.control.reply = "Rainy in Zürich."
    raw = oa.responses.with_raw_response.create(**RESPONSES_REQUEST)
    response, got = raw.parse(), openai_stub.control.requests[-1]
    names = assert_nothing_lost(RESPONSES_REQUEST, got, raw.headers)
    assert "function_call_output.input_image" in names  # chat tool messages are text only
    assert got["tool_choice"] == {"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}
    assert len(got["tools"]) == 2
    assert got["messages"][1]["content"][1]["image_url"]["detail"] == "high"
    assert got["messages"][3] == {"role": "tool", "tool_call_id": "call_fid_1", "content": "rain, 12 C"}
    assert (got["verbosity"], got["max_tokens"], got["user"]) == ("low", 200, "user-9")
    assert response.output_text == "Rainy in Zürich."


def test_chat_refusal_reaches_a_responses_caller_plain_and_streamed(oa, openai_stub):
    openai_stub.control.refusal = "I won't do that."
    plain = oa.responses.create(model="via-chat", input="do it")
    with oa.responses.stream(model="via-chat", input="do it") as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_response()
    for response in (plain, streamed):
        assert [(part.type, part.refusal) for part in response.output[0].content] == [("refusal", "I won't do that.")]
    assert {"response.output_item.added", "response.content_part.added", "response.refusal.delta",
            "response.refusal.done", "response.content_part.done", "response.output_item.done"} <= set(kinds)


# ---- chat → Messages -------------------------------------------------------------------------------

CHAT_REQUEST: dict[str, Any] = {
    "model": "via-claude", "max_completion_tokens": 300, "temperature": 1.7, "stop": ["END-OF-ANSWER", "  "],
    "user": "user-3", "parallel_tool_calls": False,
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                "parameters": WEATHER}},
              {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": CLOCK}}],
    "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}},
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "alice", "content": [
            {"type": "text", "text": "Weather where this photo was taken?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_fid_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}]},
        {"role": "tool", "tool_call_id": "call_fid_2", "content": [
            {"type": "text", "text": "rain, 12 C"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG[:-4]}"}}]},
    ],
}


def test_chat_to_messages_carries_or_names_every_field(oa, claude):
    claude.reply_text("Rainy in Zürich.")
    raw = oa.chat.completions.with_raw_response.create(**CHAT_REQUEST)
    completion, got = raw.parse(), claude.last_body
    names = assert_nothing_lost(CHAT_REQUEST, got, raw.headers)
    assert {"temperature", "stop", "messages.name", "image_url.detail", "tools.get_time"} <= set(names)
    assert "tool_choice" in raw.headers["x-gateway-mapped"]
    assert (got["temperature"], got["stop_sequences"], got["metadata"]) == (1.0, ["END-OF-ANSWER"], {"user_id": "user-3"})
    assert [t["name"] for t in got["tools"]] == ["get_weather"]  # only the allowed subset, with its mode
    assert got["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    result = got["messages"][-1]["content"][0]
    assert result["tool_use_id"] == "call_fid_2"
    assert [b["type"] for b in result["content"]] == ["text", "image"]  # Anthropic takes images in tool results
    assert completion.choices[0].message.content == "Rainy in Zürich."


def test_cache_writes_reach_a_chat_caller_plain_and_streamed(oa, claude):
    usage = {"input_tokens": 5, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 40}
    claude.reply_text("cached answer", usage=usage)
    claude.reply_text("cached answer", usage=usage)
    plain = oa.chat.completions.create(model="via-claude", messages=[{"role": "user", "content": "hi"}])
    chunks = list(oa.chat.completions.create(model="via-claude", messages=[{"role": "user", "content": "hi"}],
                                             stream=True, stream_options={"include_usage": True}))
    for reported in (plain.usage, chunks[-1].usage):
        assert reported.prompt_tokens == 55
        assert reported.prompt_tokens_details.cached_tokens == 10
        assert reported.prompt_tokens_details.model_extra["cache_creation_tokens"] == 40


# ---- Responses → chat → Messages (chained) ---------------------------------------------------------

def test_responses_to_messages_chain_names_every_hop(oa, claude):
    claude.reply_text("Rainy in Zürich.")
    request = {**RESPONSES_REQUEST, "model": "via-claude", "temperature": 1.7, "prompt_cache_key": "fid-key",
               "tool_choice": {**RESPONSES_REQUEST["tool_choice"], "mode": "required"}}
    raw = oa.responses.with_raw_response.create(**request)
    response, got = raw.parse(), claude.last_body
    names = assert_nothing_lost(request, got, raw.headers)
    # first hop (Responses → chat) and second hop (chat → Messages), in the caller's terms
    assert {"prompt_cache_key", "temperature", "input_image.detail", "text.verbosity", "tools.get_time"} <= set(names)
    assert got["temperature"] == 1.0
    assert [t["name"] for t in got["tools"]] == ["get_weather"] and got["tool_choice"] == {"type": "any"}
    result = got["messages"][-1]["content"][0]
    assert result["tool_use_id"] == "call_fid_1"
    assert [b["type"] for b in result["content"]] == ["text", "image"]  # the tool's image reaches Anthropic
    assert result["content"][1]["source"]["data"] == PNG[:-4]
    assert response.output_text == "Rainy in Zürich."
