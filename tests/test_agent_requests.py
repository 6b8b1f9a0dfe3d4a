"""What coding agents send, through every path: the requests Claude Code and Codex recorded in
tests/fixtures/agents/ (default settings, default models), verbatim and translated, and the
limits they run into (contexts too small, output caps, upstream context-length refusals)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from protocols import responses_chat, translate
from protocols.anthropic_messages import WIRE as MESSAGES
from protocols.messages_chat import MessagesToChat
from protocols.responses_chat import ResponsesToChat
from protocols.text import estimate_tokens
from protocols.translate import Hints
from providers.base import Health
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
CLAUDE_CODE = json.loads((FIXTURES / "claude-code-2.1.337-messages.json").read_text())
CODEX = json.loads((FIXTURES / "codex-0.171.0-responses.json").read_text())
KEY_ENV, ANTHROPIC_KEY = "AGENT_REQ_ANTHROPIC_KEY", "sk-ant-agents"


def _forwardable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("host", "content-length", "authorization", "x-api-key",
                                                          "accept-encoding", "user-agent", "content-type", "accept")}


# -- Claude Code: `system` turns inside `messages` ---------------------------------------------------

def test_claude_code_system_turns_are_accepted_and_kept_verbatim():
    body = CLAUDE_CODE["body"]
    assert [m["role"] for m in body["messages"]] == ["user", "system"]  # what its default model sends
    inbound = MESSAGES.decode(msgspec.json.encode(body))
    assert MESSAGES.prepare(inbound, "claude-upstream", None) == {**body, "model": "claude-upstream"}
    assert inbound.prompt_tokens > 5000


def test_claude_code_system_turns_translate_to_chat_system_messages():
    chat = MessagesToChat().request(CLAUDE_CODE["body"], Hints())
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "system"]  # the top-level system, then the turns in place
    assert chat["messages"][2]["content"].startswith("# Environment")
    with pytest.raises(Exception, match="role 'critic'"):
        MessagesToChat().request({**CLAUDE_CODE["body"], "messages": [{"role": "critic", "content": "x"}]}, Hints())


# -- Codex: responses-lite (`additional_tools`, namespaces, code-mode `exec`) --------------------------

def _chat_call(name: str, arguments: dict) -> bytes:
    return msgspec.json.encode({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


def test_codex_additional_tools_become_chat_functions_and_calls_come_back_namespaced():
    translator = ResponsesToChat()
    chat = translator.request(CODEX["body"], Hints())
    names = [t["function"]["name"] for t in chat["tools"]]
    assert names[:2] == ["exec", "wait"] and "collaboration__spawn_agent" in names and "clock__sleep" in names
    exec_tool = chat["tools"][0]["function"]
    assert exec_tool["parameters"]["required"] == ["input"] and "lark" in exec_tool["description"]
    # The code-mode tool's call is the caller's custom_tool_call again, in its namespace.
    source = "await tools.apply_patch('*** Begin Patch\\n*** End Patch\\n');"
    body, _ = translator.response(_chat_call("exec", {"input": source}))
    (item,) = msgspec.json.decode(body)["output"]
    assert item["type"] == "custom_tool_call" and item["name"] == "exec" and item["namespace"] == "functions"
    assert item["input"] == source and item["call_id"] == "call_1"
    body, _ = translator.response(_chat_call("collaboration__send_message", {"target": "a", "message": "hi"}))
    (item,) = msgspec.json.decode(body)["output"]
    assert (item["type"], item["namespace"], item["name"]) == ("function_call", "collaboration", "send_message")


def test_a_custom_tool_declared_anywhere_is_named_as_mapped():
    # Codex declares its code-mode `exec` custom tool in an `additional_tools` item, not in `tools`:
    # its free-form input still becomes a function's one string argument, and the header says so.
    report = translate.translation(ResponsesToChat(), CODEX["body"], Hints()).report
    assert "tools.custom" in report.mapped
    plain = {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {}}]}
    assert "tools.custom" not in translate.translation(ResponsesToChat(), plain, Hints()).report.mapped


def test_tool_choice_names_a_namespaced_tool_as_it_was_declared():
    translator = ResponsesToChat()
    chat = translator.request({**CODEX["body"], "tool_choice": {"type": "function", "name": "spawn_agent"}}, Hints())
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "collaboration__spawn_agent"}}
    chat = translator.request({**CODEX["body"], "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [
        {"type": "function", "name": "sleep", "namespace": "clock"}, {"type": "function", "name": "exec"}]}}, Hints())
    assert [t["function"]["name"] for t in chat["tool_choice"]["allowed_tools"]["tools"]] == ["clock__sleep", "exec"]
    assert {"clock__sleep", "exec"} <= {t["function"]["name"] for t in chat["tools"]}


async def test_codex_namespaced_calls_stream_back_as_the_callers_items():
    translator = ResponsesToChat()
    translator.request({**CODEX["body"], "stream": True}, Hints())
    chunks = [{"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
                  {"index": 0, "id": "call_9", "type": "function",
                   "function": {"name": "clock__sleep", "arguments": '{"duration_ms"'}}]}}]},
              {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
                  {"index": 0, "function": {"arguments": ": 5}"}}]}, "finish_reason": "tool_calls"}]}]

    async def upstream():
        for chunk in chunks:
            yield msgspec.json.encode(chunk)

    events = [msgspec.json.decode(e) async for e in translator.stream(upstream())]
    added = next(e for e in events if e["type"] == "response.output_item.added")
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert added["item"]["namespace"] == done["item"]["namespace"] == "clock"
    assert done["item"]["name"] == "sleep" and done["item"]["arguments"] == '{"duration_ms": 5}'


# -- client-executed tools (`tool_search` run by the caller) ------------------------------------------

SEARCH = {"type": "tool_search", "execution": "client", "description": "Find tools.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}
FOUND = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


def test_client_tool_search_is_a_function_whose_calls_come_back_as_tool_search_calls():
    translator = ResponsesToChat()
    body = {"model": "m", "input": "find a weather tool", "tools": [SEARCH]}
    chat = translator.request(body, Hints())
    assert chat["tools"][0]["function"]["name"] == "tool_search"
    assert chat["tools"][0]["function"]["parameters"] == SEARCH["parameters"]
    answer, _ = translator.response(_chat_call("tool_search", {"query": "weather"}))
    (item,) = msgspec.json.decode(answer)["output"]
    assert item["type"] == "tool_search_call" and item["execution"] == "client"
    assert item["arguments"] == {"query": "weather"} and item["call_id"] == "call_1"
    # The next turn: the caller's call and output go up as a tool round; the tools it found are declared.
    follow = {**body, "input": [{"role": "user", "content": "find a weather tool"}, item,
                                {"type": "tool_search_output", "call_id": "call_1", "execution": "client",
                                 "status": "completed", "tools": [FOUND]}]}
    chat = translator.request(follow, Hints())
    assert [t["function"]["name"] for t in chat["tools"]] == ["tool_search", "get_weather"]
    assert chat["messages"][1]["tool_calls"][0]["function"]["name"] == "tool_search"
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "call_1",
                                   "content": json.dumps({"tools": [FOUND]})}


def test_hosted_tools_are_still_refused_on_translated_targets():
    with pytest.raises(Exception, match="hosted tool 'web_search'"):
        ResponsesToChat().request({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, Hints())


# -- the estimator: a tool schema property named `type` -------------------------------------------------

def test_estimator_reads_a_schema_with_a_property_named_type():
    schema = {"type": "object", "properties": {"type": {"type": "string", "enum": ["a", "b"]},
                                               "items": {"type": "array", "items": {"type": "string"}}}}
    assert estimate_tokens({"name": "t", "input_schema": schema}) > 5
    tool = {"name": "t", "description": "d", "input_schema": schema}
    inbound = MESSAGES.decode(msgspec.json.encode({"model": "m", "max_tokens": 5, "tools": [tool],
                                                   "messages": [{"role": "user", "content": "hi"}]}))
    assert inbound.prompt_tokens > 5
    assert responses_chat.messages_of({"input": "hi"}) == [{"role": "user", "content": "hi"}]


# -- over HTTP: a gateway process in front of the stubs -------------------------------------------------

POLICY = """
    targets:
      claude:
        provider: anthropic
        model: claude-upstream
        base_url: {anthropic_url}
        api_key_env: {key_env}
        timeouts: {{connect: 2, first_token: 10, total: 20}}
      claude-b:
        provider: anthropic
        model: claude-upstream-b
        base_url: {anthropic_url}
        api_key_env: {key_env}
        timeouts: {{connect: 2, first_token: 10, total: 20}}
      openai:
        provider: openai
        model: gpt-upstream
        base_url: {openai_url}
        api_key_env: STUB_OPENAI_KEY
        timeouts: {{connect: 2, first_token: 10, total: 20}}
        headers: {{X-Team: platform}}
      openai-b:
        provider: openai
        model: gpt-upstream-b
        base_url: {openai_url}
        api_key_env: STUB_OPENAI_KEY
        timeouts: {{connect: 2, first_token: 10, total: 20}}
      chat:
        provider: selfhost
        model: chat-upstream
        base_url: {openai_url}
        api_key_env: STUB_OPENAI_KEY
        timeouts: {{connect: 2, first_token: 10, total: 20}}
      small-a:
        provider: selfhost
        model: small
        base_url: {openai_url}
        api_key_env: STUB_OPENAI_KEY
        context_window: 100
      small-b:
        provider: selfhost
        model: small
        base_url: {openai_url}
        api_key_env: STUB_OPENAI_KEY
        context_window: 200
        max_output_tokens: 100
    models:
      claude:
        targets: [claude, claude-b]
        aliases: ["claude-opus-*"]
      claude-via-chat:
        targets: [chat]
      codex:
        targets: [openai, openai-b]
        aliases: ["gpt-*"]
      codex-via-chat:
        targets: [chat]
      tiny-context:
        targets: [small-a, small-b]
      clamped:
        targets: [small-b]
        max_tokens: 1000
        output: {{over: clamp}}
      capped:
        targets: [small-b]
        max_tokens: 1000
    retry: {{attempts: 1}}
    limits: {{max_body_bytes: 8388608, max_prompt_tokens: 400000, max_tokens: 200000}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory, claude_stub, _module_stub):
    text = POLICY.format(anthropic_url=claude_stub.base_url, key_env=KEY_ENV, openai_url=_module_stub.base_url)
    path = write_policy(tmp_path_factory.mktemp("agents"), text)
    with GatewayProcess(path, env={KEY_ENV: ANTHROPIC_KEY, "STUB_OPENAI_KEY": "sk-upstream"}) as proc:
        yield proc


@pytest.fixture
def stub(claude_stub):
    claude_stub.controller.reset()
    return claude_stub.controller


def _post(gw, path: str, body: dict, headers: dict | None = None, key: str | None = None) -> httpx.Response:
    return httpx.post(gw.root_url + path, json=body, timeout=30,
                      headers={"x-api-key": key or gw.dev_key, **(headers or {})})


def test_claude_code_request_reaches_an_anthropic_target_verbatim(gw, stub):
    headers = _forwardable(CLAUDE_CODE["headers"])
    body = {k: v for k, v in CLAUDE_CODE["body"].items() if k != "stream"}  # a plain answer is easier to read
    reply = _post(gw, CLAUDE_CODE["path"], body, headers)
    assert reply.status_code == 200, reply.text
    assert stub.last_body == {**body, "model": "claude-upstream"}
    received = stub.requests[-1].headers
    assert received["anthropic-beta"] == CLAUDE_CODE["headers"]["anthropic-beta"] and received["x-app"] == "cli"


def test_claude_code_request_is_translated_for_a_chat_target(gw, openai_stub):
    reply = _post(gw, "/v1/messages", {**CLAUDE_CODE["body"], "model": "claude-via-chat", "stream": False},
                  _forwardable(CLAUDE_CODE["headers"]))
    assert reply.status_code == 200, reply.text
    assert [m["role"] for m in openai_stub.control.requests[-1]["messages"]] == ["system", "user", "system"]


def test_codex_request_reaches_an_openai_target_with_its_headers(gw, openai_stub):
    headers = _forwardable(CODEX["headers"])
    # a caller never replaces the operator's target headers, nor picks the account the key bills
    spoofed = {"x-team": "caller", "openai-organization": "org-caller", "openai-project": "proj-caller"}
    with httpx.stream("POST", gw.base_url + "/responses", json=CODEX["body"], timeout=30,
                      headers={"authorization": f"Bearer {gw.dev_key}", **headers, **spoofed}) as reply:
        assert reply.status_code == 200, reply.read()
        events = [line for line in reply.iter_lines() if line.startswith("event:")]
    assert events[-1] == "event: response.completed"
    assert openai_stub.control.requests[-1] == {**CODEX["body"], "model": "gpt-upstream"}
    received = {k.lower(): v for k, v in openai_stub.control.headers[-1].items()}
    assert received["x-openai-internal-codex-responses-lite"] == "true"
    assert received["session-id"] == CODEX["headers"]["session-id"] and received["originator"] == "codex_exec"
    assert received["x-team"] == "platform" and "openai-organization" not in received and "openai-project" not in received


def test_codex_request_is_translated_for_a_chat_target(gw, openai_stub):
    reply = httpx.post(gw.base_url + "/responses", json={**CODEX["body"], "model": "codex-via-chat", "stream": False},
                       headers={"authorization": f"Bearer {gw.dev_key}", **_forwardable(CODEX["headers"])}, timeout=30)
    assert reply.status_code == 200, reply.text
    sent = openai_stub.control.requests[-1]
    assert [t["function"]["name"] for t in sent["tools"]][:2] == ["exec", "wait"]
    (item,) = reply.json()["output"]  # the stub calls the first tool: exec, a custom tool in `functions`
    assert (item["type"], item["namespace"], item["name"]) == ("custom_tool_call", "functions", "exec")


def test_a_prompt_no_candidate_can_hold_is_the_callers_400_in_its_protocol(gw, openai_stub):
    long = "word " * 1000  # ~1,250 tokens; the largest context here is 200
    chat = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {gw.dev_key}"},
                      json={"model": "tiny-context", "messages": [{"role": "user", "content": long}]}, timeout=30)
    assert chat.status_code == 400
    error = chat.json()["error"]
    assert error["code"] == "context_length_exceeded" and "200 maximum" in error["message"]
    messages = _post(gw, "/v1/messages", {"model": "tiny-context", "max_tokens": 10,
                                           "messages": [{"role": "user", "content": long}]})
    assert messages.status_code == 400
    assert messages.json()["error"] == {"type": "invalid_request_error", "message": error["message"]}
    assert messages.json()["error"]["message"].startswith("prompt is too long")
    assert openai_stub.control.requests == []  # refused before any upstream was asked
    fits = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {gw.dev_key}"},
                      json={"model": "tiny-context", "messages": [{"role": "user", "content": "word " * 120}]},
                      timeout=30)
    assert fits.status_code == 200 and fits.headers["x-gateway-target"] == "small-b"  # small-a cannot hold it


def test_output_caps_are_clamped_when_the_policy_says_so(gw, openai_stub):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 32000}
    auth = {"authorization": f"Bearer {gw.dev_key}"}
    refused = httpx.post(gw.base_url + "/chat/completions", json={**body, "model": "capped"}, headers=auth, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"
    clamped = httpx.post(gw.base_url + "/chat/completions", json={**body, "model": "clamped"}, headers=auth, timeout=30)
    assert clamped.status_code == 200, clamped.text
    assert clamped.headers["x-gateway-clamped"] == "max_tokens=100"  # the target's allowance
    assert openai_stub.control.requests[-1]["max_tokens"] == 100
    messages = _post(gw, "/v1/messages", {"model": "clamped", "max_tokens": 32000,
                                           "messages": [{"role": "user", "content": "hi"}]})
    assert messages.status_code == 200 and messages.headers["x-gateway-clamped"] == "max_tokens=100"
    assert openai_stub.control.requests[-1]["max_tokens"] == 100


ANTHROPIC_TOO_LONG = "prompt is too long: 250000 tokens > 200000 maximum"
OPENAI_TOO_LONG = ("This model's maximum context length is 128000 tokens. However, your messages resulted in "
                   "250000 tokens. Please reduce the length of the messages.")


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_context_length_refusal_is_final_and_a_400(gw, stub, openai_stub, stream):
    stub.fail_next(1, status=400, message=ANTHROPIC_TOO_LONG)
    reply = _post(gw, "/v1/messages", {"model": "claude-opus-5-5", "max_tokens": 10, "stream": stream,
                                        "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 400, reply.text
    assert reply.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": ANTHROPIC_TOO_LONG}}
    assert stub.call_count == 1  # neither retried nor failed over to claude-b
    openai_stub.control.fail_next(1, status=400, message=OPENAI_TOO_LONG)
    reply = httpx.post(gw.base_url + "/responses", headers={"authorization": f"Bearer {gw.dev_key}"}, timeout=30,
                       json={"model": "gpt-5", "input": "hi", "stream": stream})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["message"] == OPENAI_TOO_LONG
    assert len(openai_stub.control.requests) == 1


def test_a_context_length_refusal_still_fails_over_to_a_larger_window(gw, openai_stub):
    """Admission keeps a candidate whose window holds the prompt's estimate; the estimate can be
    short (code, CJK), and then the target with the larger known window must get its turn."""
    openai_stub.control.fail_next(1, status=400, message=OPENAI_TOO_LONG)
    reply = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {gw.dev_key}"},
                       timeout=30, json={"model": "tiny-context", "max_tokens": 5,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-gateway-target"] == "small-b" and reply.headers["x-gateway-fallbacks"] == "small-a"
    assert len(openai_stub.control.requests) == 2


class _Bug(Exception):
    pass


class BrokenProvider:
    """An upstream adapter with a bug: what an internal error looks like to the route."""

    name = "broken"
    apis = frozenset()

    async def complete(self, request):
        raise _Bug("a bug")

    def stream(self, request):
        raise _Bug("a bug")

    async def health(self):
        return Health(True)

    async def aclose(self):
        pass


def test_internal_errors_leave_in_the_callers_protocol(tmp_path):
    path = write_policy(tmp_path, """
        targets:
          t: {provider: selfhost, model: m, base_url: "http://127.0.0.1:9/v1"}
        models:
          m: {targets: [t]}
    """)
    app = create_app(Settings(policy_path=str(path), cache_dir=str(tmp_path / "cache"), watch_policy=False,
                              dev_key="sk-dev"))
    with TestClient(app) as client:
        router = app.state.gateway.runtime.router
        broken = BrokenProvider()
        broken.apis = router.providers["t"].apis
        router.providers["t"] = broken
        headers = {"authorization": "Bearer sk-dev"}
        messages = client.post("/v1/messages", headers=headers,
                               json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        chat = client.post("/v1/chat/completions", headers=headers,
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert messages.status_code == 500
    assert messages.json() == {"type": "error", "error": {"type": "api_error",
                                                          "message": "The gateway hit an internal error."}}
    assert chat.status_code == 500 and chat.json()["error"]["code"] == "internal_error"
