"""The OpenAI Responses API through a real gateway process, driven by the official `openai` SDK:
verbatim on an OpenAI stub (compared with what the stub received), translated on an Anthropic
stub (through the chat pivot), stored state (previous_response_id, retrieve, delete, input items)
isolated per tenant, budgets settled on every exit path, and a Codex-shaped loop.
The bundled engine (translated, embedded target) is in tests/test_responses_engine.py."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gateway.auth import hash_key
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.anthropic_stub import start_anthropic_stub
from tests.stubs.openai_stub import free_port

KEY_A, KEY_B, TINY = ("sk-a-" + uuid.uuid4().hex, "sk-b-" + uuid.uuid4().hex, "sk-tiny-" + uuid.uuid4().hex)
TOOLS = [
    {"type": "function", "name": "lookup", "description": "Look a word up", "strict": False,
     "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    {"type": "function", "name": "shout", "description": "Say it loud", "strict": False,
     "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
]


@pytest.fixture(scope="module")
def claude_stub():
    with start_anthropic_stub(api_key="sk-ant-test") as (base_url, controller):
        yield base_url, controller


@pytest.fixture(scope="module")
def gw(tmp_path_factory, _module_stub, claude_stub):
    policy = write_policy(tmp_path_factory.mktemp("responses"), f"""
        targets:
          stub-openai:
            provider: openai
            model: gpt-4o-mini
            base_url: {_module_stub.base_url}
            api_key_env: STUB_OPENAI_KEY
            pricing: {{input: 0.15, output: 0.6}}
            timeouts: {{connect: 2, first_token: 5, total: 10}}
          dead-openai:
            provider: openai
            model: gpt-4o-mini
            base_url: http://127.0.0.1:{free_port()}/v1
            api_key_env: STUB_OPENAI_KEY
            timeouts: {{connect: 1, first_token: 2, total: 3}}
          claude:
            provider: anthropic
            model: claude-test
            base_url: {claude_stub[0]}
            api_key_env: STUB_ANTHROPIC_KEY
        models:
          gpt-test: {{targets: [dead-openai, stub-openai], max_tokens: 1000}}
          claude-test: {{targets: [claude], max_tokens: 1000}}
          mixed: {{targets: [claude, stub-openai], max_tokens: 1000}}
        retry: {{attempts: 1}}
        responses: {{ttl_seconds: 600}}
        tenants:
          a: {{keys: ["sha256:{hash_key(KEY_A)}"]}}
          b: {{keys: ["sha256:{hash_key(KEY_B)}"]}}
          tiny: {{keys: ["sha256:{hash_key(TINY)}"], limits: {{tokens_per_day: 100000}}}}
    """)
    with GatewayProcess(policy, env={"STUB_ANTHROPIC_KEY": "sk-ant-test"}) as proc:
        yield proc


@pytest.fixture
def a(gw, openai_stub):
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0)


@pytest.fixture
def b(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_B, max_retries=0)


@pytest.fixture
def claude(claude_stub):
    controller = claude_stub[1]
    controller.reset()
    return controller


def _events(stream) -> list:
    events = list(stream)
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "sequence numbers count up by one"
    return events


# -- OpenAI target: verbatim ---------------------------------------------------------------------

def test_create_is_forwarded_verbatim_with_failover_and_usage(a, openai_stub):
    sent = {"model": "gpt-test", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
            "instructions": "Be brief.", "max_output_tokens": 50, "metadata": {"k": "v"}, "temperature": 0.5,
            "include": ["reasoning.encrypted_content"], "store": True}
    raw = a.responses.with_raw_response.create(**sent, extra_body={"vendor_flag": {"x": 1}})
    response = raw.parse()
    assert response.output_text == "echo: hello there"
    assert raw.headers["x-gateway-target"] == "stub-openai" and raw.headers["x-gateway-fallbacks"] == "dead-openai"
    assert openai_stub.control.requests[-1] == {**sent, "model": "gpt-4o-mini", "vendor_flag": {"x": 1}}
    assert response.usage.output_tokens_details.reasoning_tokens == 3 and response.output[0].type == "reasoning"
    assert response.output[0].encrypted_content, "reasoning items reach the caller untouched"


def test_stream_is_relayed_as_named_events(a, openai_stub):
    with a.responses.stream(model="gpt-test", input="one two three", max_output_tokens=30) as stream:
        events = _events(stream)
        final = stream.get_final_response()
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed" and final.output_text == "echo: one two three"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text
    assert final.usage.output_tokens == 4 and final.usage.input_tokens > 0
    assert openai_stub.control.requests[-1]["stream"] is True


def test_function_tool_loop_and_previous_response_id(a, openai_stub):
    first = a.responses.create(model="gpt-test", input="find pears", tools=TOOLS, max_output_tokens=50)
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["lookup", "shout"], "two parallel calls"
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": f"{c.name}=ok"} for c in calls]
    second = a.responses.create(model="gpt-test", previous_response_id=first.id, input=outputs, tools=TOOLS,
                                max_output_tokens=50)
    assert second.output_text == "tool said: lookup=ok shout=ok"
    assert a.responses.retrieve(second.id).previous_response_id == first.id, "the stored copy names its parent"
    forwarded = openai_stub.control.requests[-1]
    assert "previous_response_id" not in forwarded, "the gateway rebuilt the conversation itself"
    assert [i.get("type") for i in forwarded["input"]] == ["message", "function_call", "function_call", *["function_call_output"] * 2]
    assert forwarded["input"][1]["call_id"] == calls[0].call_id
    # The stored chain: input items of the second response are the whole conversation.
    items = a.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message", "function_call", "function_call", "function_call_output",
                                             "function_call_output"]
    assert items.data[0].content[0].text == "find pears"
    assert [i.id for i in a.responses.input_items.list(second.id, limit=2).data] == [i.id for i in items.data[::-1][:2]]


def test_parse_with_a_pydantic_model(a, openai_stub):
    class Echo(BaseModel):
        echo: str

    parsed = a.responses.parse(model="gpt-test", input="structured please", text_format=Echo, max_output_tokens=50)
    assert parsed.output_parsed == Echo(echo="structured please")
    assert openai_stub.control.requests[-1]["text"]["format"]["type"] == "json_schema"


def test_retrieve_delete_and_tenant_isolation(a, b, openai_stub):
    created = a.responses.create(model="gpt-test", input="mine only", max_output_tokens=20)
    assert a.responses.retrieve(created.id).output_text == "echo: mine only"
    for attempt in (lambda: b.responses.retrieve(created.id), lambda: b.responses.input_items.list(created.id),
                    lambda: b.responses.delete(created.id),
                    lambda: b.responses.create(model="gpt-test", previous_response_id=created.id, input="steal")):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert a.responses.retrieve(created.id).id == created.id, "b's delete did nothing"
    events = _events(a.responses.retrieve(created.id, stream=True))  # the stored answer as its event stream
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == "echo: mine only" and events[-1].response.id == created.id
    resumed = list(a.responses.retrieve(created.id, stream=True, starting_after=2))
    assert [e.sequence_number for e in resumed] == [e.sequence_number for e in events[3:]]
    with pytest.raises(openai.NotFoundError):
        list(b.responses.retrieve(created.id, stream=True))
    bad = httpx.get(f"{a.base_url}responses/{created.id}", params={"stream": "maybe"},
                    headers={"authorization": f"Bearer {KEY_A}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream"
    bad = httpx.get(f"{a.base_url}responses/{created.id}", params={"stream": "true", "starting_after": "x"},
                    headers={"authorization": f"Bearer {KEY_A}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "starting_after"
    reference = [{"type": "item_reference", "id": created.output[0].id}, {"role": "user", "content": "again"}]
    with pytest.raises(openai.NotFoundError):
        b.responses.create(model="gpt-test", input=reference)
    a.responses.create(model="gpt-test", input=reference, max_output_tokens=20)
    assert openai_stub.control.requests[-1]["input"][0]["content"][0]["text"] == "echo: mine only", "expanded"
    a.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        a.responses.retrieve(created.id)
    assert created.id in caught.value.message
    unstored = a.responses.create(model="gpt-test", input="forget me", store=False, max_output_tokens=20)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(unstored.id)
    calls = len(openai_stub.control.requests)
    with pytest.raises(openai.NotFoundError) as caught:
        a.responses.create(model="gpt-test", previous_response_id="resp_unknown", input="x")
    assert caught.value.param == "previous_response_id" and len(openai_stub.control.requests) == calls


def test_input_tokens_estimated_or_counted_upstream(a, claude):
    raw = a.responses.input_tokens.with_raw_response.count(model="gpt-test", input="a fairly short question",
                                                           instructions="Be nice.")
    count = raw.parse()
    assert count.object == "response.input_tokens" and 5 <= count.input_tokens <= 40
    assert raw.headers["x-gateway-token-count"] == "estimate"
    raw = a.responses.input_tokens.with_raw_response.count(model="claude-test", input="count this upstream")
    assert raw.headers["x-gateway-token-count"] == "counted" and raw.parse().input_tokens > 0
    assert claude.call_count == 0, "counting is not a message"


def test_bad_input_gets_openai_errors(gw, a, openai_stub):
    with pytest.raises(openai.BadRequestError) as caught:
        a.responses.create(model="gpt-test", input=[{"type": "function_call_output", "output": "x"}])
    assert caught.value.param == "input[0].call_id"
    with pytest.raises(openai.BadRequestError) as caught:
        a.responses.create(model="gpt-test", input="x", max_output_tokens=5000)
    assert caught.value.param == "max_output_tokens"
    with pytest.raises(openai.NotFoundError):
        a.responses.create(model="no-such-model", input="x")
    assert openai_stub.control.requests == []


def test_deterministic_requests_are_cached_and_replayed_as_the_documented_stream(a, openai_stub):
    first = a.responses.with_raw_response.create(model="gpt-test", input="cache me", temperature=0,
                                                 max_output_tokens=20, store=False)
    calls = len(openai_stub.control.requests)
    with a.responses.stream(model="gpt-test", input="cache me", temperature=0, max_output_tokens=20,
                            store=False) as stream:
        events = _events(stream)
        final = stream.get_final_response()
    assert len(openai_stub.control.requests) == calls, "the replay spent nothing upstream"
    assert final.output_text == first.parse().output_text == "echo: cache me"
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]


def test_cached_tool_calls_and_reasoning_replay_through_the_sdk_stream_accumulator(a, openai_stub):
    request = {"model": "gpt-test", "input": "call both", "tools": TOOLS, "temperature": 0, "max_output_tokens": 50,
               "store": False, "include": ["reasoning.encrypted_content"]}
    first = a.responses.create(**request)
    with a.responses.stream(**request) as stream:
        events = _events(stream)
        final = stream.get_final_response()
    assert [item.type for item in first.output] == ["reasoning", "function_call", "function_call"]
    dump = lambda items: [{k: v for k, v in i.model_dump().items() if k != "parsed_arguments"} for i in items]
    assert dump(final.output) == dump(first.output)
    assert len(openai_stub.control.requests) == 1, "the stream was replayed from the cache"
    assert sum(e.type == "response.function_call_arguments.done" for e in events) == 2


def test_input_items_limit_is_bounded(gw):
    response = httpx.get(gw.base_url + "/responses/resp_x/input_items?limit=101", timeout=5,
                         headers={"authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"


def test_mid_stream_failure_is_an_error_event_the_sdk_raises(a, openai_stub):
    openai_stub.control.fail_next(error_after_chunks=1, message="boom")
    with pytest.raises(openai.APIError) as caught, \
            a.responses.stream(model="gpt-test", input="alpha beta gamma", max_output_tokens=30) as stream:
        list(stream)
    assert "boom" in str(caught.value)


# -- Anthropic target: translated through the chat pivot -------------------------------------------

def test_claude_target_create_stream_and_tool_loop(a, claude):
    raw = a.responses.with_raw_response.create(model="claude-test", input="hi claude", instructions="Be terse.",
                                               max_output_tokens=100, temperature=0.2)
    response = raw.parse()
    assert raw.headers["x-gateway-target"] == "claude" and response.output_text == "hi claude"
    assert response.instructions == "Be terse." and response.usage.input_tokens > 0
    assert claude.last_body["system"][0]["text"] == "Be terse." if isinstance(claude.last_body["system"], list) \
        else claude.last_body["system"] == "Be terse."
    with a.responses.stream(model="claude-test", input="stream it please", max_output_tokens=100) as stream:
        events = _events(stream)
        final = stream.get_final_response()
    assert final.output_text == "stream it please" and events[-1].type == "response.completed"
    assert final.usage.output_tokens > 0 and final.id == events[0].response.id

    claude.reply_tool_use("lookup", {"text": "pears"}, id="toolu_1")
    first = a.responses.create(model="claude-test", input="find pears", tools=TOOLS[:1], max_output_tokens=100)
    call = next(item for item in first.output if item.type == "function_call")
    assert (call.name, json.loads(call.arguments), call.call_id) == ("lookup", {"text": "pears"}, "toolu_1")
    second = a.responses.create(model="claude-test", previous_response_id=first.id, max_output_tokens=100,
                                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "a fruit"}])
    assert second.output_text == "a fruit"
    tool_result = claude.last_body["messages"][-1]["content"][0]
    assert (tool_result["type"], tool_result["tool_use_id"]) == ("tool_result", "toolu_1")


APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch to files.",
               "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch hunk+ end_patch"}}
PATCH = "*** Begin Patch\n*** Update File: a.py\n@@\n-x = 1\n+x = 2\n*** End Patch"


def test_custom_tools_reach_a_claude_target_as_functions_and_come_back_as_custom_calls(a, claude):
    """Codex's free-form `apply_patch` tool on a non-OpenAI target: a function with one `input`
    string (the grammar in its description), answered as a `custom_tool_call` item, streamed with
    the custom-tool input events, and continued with `custom_tool_call_output`."""
    claude.reply_tool_use("apply_patch", {"input": PATCH}, id="toolu_9")
    first = a.responses.create(model="claude-test", input="fix a.py", tools=[APPLY_PATCH, TOOLS[0]],
                               tool_choice="auto", max_output_tokens=100)
    call = next(item for item in first.output if item.type == "custom_tool_call")
    assert (call.name, call.input, call.call_id) == ("apply_patch", PATCH, "toolu_9")
    sent = {tool["name"]: tool for tool in claude.last_body["tools"]}
    assert sent["apply_patch"]["input_schema"]["required"] == ["input"]
    assert "start: begin_patch hunk+ end_patch" in sent["apply_patch"]["description"]
    assert "lookup" in sent

    claude.reply_tool_use("apply_patch", {"input": PATCH}, id="toolu_10")
    with a.responses.stream(model="claude-test", input="fix a.py", tools=[APPLY_PATCH],
                            tool_choice={"type": "custom", "name": "apply_patch"}, max_output_tokens=100) as stream:
        events = _events(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert "response.custom_tool_call_input.delta" in kinds and "response.custom_tool_call_input.done" in kinds
    assert "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta") == PATCH
    assert final.output[0].type == "custom_tool_call" and final.output[0].input == PATCH
    assert claude.last_body["tool_choice"] == {"type": "tool", "name": "apply_patch"}

    second = a.responses.create(model="claude-test", tools=[APPLY_PATCH], max_output_tokens=100, input=[
        {"type": "message", "role": "user", "content": "fix a.py"},
        call.model_dump(exclude_none=True),
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"}])
    assert second.output_text == "Done!"
    used, result = claude.last_body["messages"][-2]["content"][0], claude.last_body["messages"][-1]["content"][0]
    assert (used["type"], used["name"], used["input"]) == ("tool_use", "apply_patch", {"input": PATCH})
    assert (result["type"], result["tool_use_id"]) == ("tool_result", "toolu_9")



@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])  # verbatim, translated
def test_the_live_reply_names_the_previous_response_it_continues(a, claude, openai_stub, model):
    first = a.responses.create(model=model, input="remember the word kiwi", max_output_tokens=50)
    second = a.responses.create(model=model, previous_response_id=first.id, input="what word?", max_output_tokens=50)
    assert second.previous_response_id == first.id
    with a.responses.stream(model=model, previous_response_id=second.id, input="again?", max_output_tokens=50) as stream:
        events = _events(stream)
        final = stream.get_final_response()
    carried = [e.response.previous_response_id for e in events if e.type.startswith("response.") and hasattr(e, "response")]
    assert carried and set(carried) == {second.id}, carried
    assert final.previous_response_id == second.id
    assert a.responses.retrieve(final.id).previous_response_id == second.id
    assert a.responses.create(model=model, input="fresh", max_output_tokens=50).previous_response_id is None

def test_claude_target_refuses_hosted_tools_and_continues_an_openai_conversation(a, claude, openai_stub):
    with pytest.raises(openai.BadRequestError) as caught:
        a.responses.create(model="claude-test", input="search", tools=[{"type": "web_search"}])
    assert "web_search" in caught.value.message and claude.call_count == 0
    started = a.responses.create(model="gpt-test", input="remember the word kiwi", max_output_tokens=20)
    continued = a.responses.create(model="claude-test", previous_response_id=started.id, input="what word?",
                                   max_output_tokens=100)
    texts = [m["content"] for m in claude.last_body["messages"]]
    assert "remember the word kiwi" in json.dumps(texts) and "echo: remember the word kiwi" in json.dumps(texts)
    assert continued.output_text == "what word?"


def test_failover_before_the_first_event_crosses_protocols(a, claude, openai_stub):
    """Claude (translated) is overloaded before anything was sent: the OpenAI target (verbatim)
    answers instead, and the caller sees one clean stream."""
    claude.fail_next(1, status=529)
    with a.responses.with_streaming_response.create(model="mixed", input="fail over please", stream=True,
                                                    max_output_tokens=50) as raw:
        assert (raw.headers["x-gateway-target"], raw.headers["x-gateway-fallbacks"]) == ("stub-openai", "claude")
        text = "".join(json.loads(line[6:]).get("delta", "") for line in raw.iter_lines()
                       if line.startswith("data: ") and "output_text.delta" in line)
    assert text == "echo: fail over please" and claude.call_count == 1


def test_claude_mid_stream_error_ends_with_an_error_event(a, claude):
    claude.error_mid_stream("overloaded_error", after=1)
    seen = []
    with pytest.raises(openai.APIError) as caught, \
            a.responses.stream(model="claude-test", input="x", max_output_tokens=100) as stream:
        seen.extend(event.type for event in stream)
    assert "overloaded" in str(caught.value) and "response.output_text.delta" in seen
    assert "response.completed" not in seen


# -- budgets -----------------------------------------------------------------------------------------

def _settled(gw, key: str) -> dict:
    for _ in range(100):
        usage = httpx.get(gw.base_url + "/usage", headers={"authorization": f"Bearer {key}"}, timeout=5).json()
        window = usage["windows"]["tokens_per_day"]
        if window["reserved"] == 0:
            return window
        time.sleep(0.05)
    raise AssertionError(f"reservations never settled: {usage}")


def test_budgets_settle_on_every_exit_path(gw, openai_stub, claude):
    tiny = openai.OpenAI(base_url=gw.base_url, api_key=TINY, max_retries=0)
    before = _settled(gw, TINY)["spent"]
    done = tiny.responses.create(model="gpt-test", input="count me", max_output_tokens=20)
    after = _settled(gw, TINY)["spent"]
    assert after - before == done.usage.total_tokens, "non-streamed: settled on reported usage"
    with tiny.responses.stream(model="claude-test", input="count me too", max_output_tokens=50) as stream:
        final = stream.get_final_response()
    streamed = _settled(gw, TINY)["spent"]
    assert streamed - after == final.usage.total_tokens, "translated stream: settled on reported usage"
    openai_stub.control.fail_next(error_after_chunks=1)
    with pytest.raises(openai.APIError), \
            tiny.responses.stream(model="gpt-test", input="one two three four", max_output_tokens=30) as stream:
        list(stream)
    broken = _settled(gw, TINY)["spent"]
    assert broken > streamed, "a broken stream is charged what was delivered"
    openai_stub.control.fail_next(status=400, message="bad")
    with pytest.raises(openai.BadRequestError):
        tiny.responses.create(model="gpt-test", input="refused", max_output_tokens=20)
    assert _settled(gw, TINY)["spent"] == broken, "a refused request costs nothing"
    openai_stub.control.delay_seconds = 2.0
    with pytest.raises(httpx.ReadTimeout):  # hangs up before the first event
        httpx.post(gw.base_url + "/responses", timeout=0.5, headers={"authorization": f"Bearer {TINY}"},
                   json={"model": "gpt-test", "input": "hang up", "stream": True, "max_output_tokens": 20})
    assert _settled(gw, TINY)["reserved"] == 0, "a caller that hangs up releases its reservation"


# -- Codex-shaped loop ------------------------------------------------------------------------------

def test_codex_shaped_loop(a, openai_stub):
    """store false, encrypted reasoning included and sent back, parallel tools, streaming, several turns."""
    conversation: list = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the bug"}]}]
    for turn in range(3):
        with a.responses.stream(model="gpt-test", input=conversation, tools=TOOLS, store=False,
                                include=["reasoning.encrypted_content"], parallel_tool_calls=True,
                                instructions="You are Codex.", max_output_tokens=100) as stream:
            final = stream.get_final_response()
        sent = openai_stub.control.requests[-1]
        assert sent["input"] == conversation, "the whole input, reasoning items included, verbatim"
        conversation += [item.model_dump(exclude_none=True) for item in final.output]
        calls = [item for item in final.output if item.type == "function_call"]
        if turn < 2:
            assert len(calls) == 2 and final.output[0].type == "reasoning"
            conversation += [{"type": "function_call_output", "call_id": c.call_id, "output": f"turn {turn}"} for c in calls]
            if turn == 0:
                conversation.append({"type": "message", "role": "user", "content": "now shout"})
        else:
            assert final.output_text == "tool said: turn 1 turn 1"
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(final.id)
    assert any(i.get("encrypted_content") for i in openai_stub.control.requests[-1]["input"])


# -- hostile input: structured fuzz of the translated path ------------------------------------------

_text = st.text(max_size=12)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "text", "refusal"]), "text": _text}),
    st.fixed_dictionaries({"type": st.just("input_image"), "image_url": st.sampled_from(["data:image/png;base64,AA", ""])}),
    st.fixed_dictionaries({"type": st.sampled_from(["input_file", "input_audio", "weird"]), "file_id": _text}),
    st.dictionaries(_text, _text, max_size=2), st.integers(), st.none())
_item = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "x"]),
                           "content": st.one_of(_text, st.lists(_part, max_size=3), st.none())}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": _text, "name": _text, "arguments": _text}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": _text,
                           "output": st.one_of(_text, st.lists(_part, max_size=2))}),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference", "web_search_call", "message"]),
                           "id": _text, "summary": st.lists(st.dictionaries(_text, _text, max_size=1), max_size=1)}),
    st.dictionaries(_text, st.one_of(_text, st.integers()), max_size=3), _text, st.integers())
_tool = st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "name": _text,
                           "parameters": st.just({"type": "object", "properties": {}})}),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "file_search", "mcp"])}), st.dictionaries(_text, _text, max_size=1))
_bodies = st.fixed_dictionaries(
    {"model": st.just("claude-test"), "input": st.one_of(_text, st.lists(_item, max_size=5))},
    optional={"tools": st.lists(_tool, max_size=2), "instructions": st.one_of(_text, st.integers()),
              "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required", "bogus"]),
                                       st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search", "allowed_tools"]),
                                                              "name": _text})),
              "text": st.fixed_dictionaries({"format": st.fixed_dictionaries(
                  {"type": st.sampled_from(["text", "json_object", "json_schema", "grammar"]), "name": _text})}),
              "max_output_tokens": st.integers(-5, 2000), "temperature": st.floats(-1, 3),
              "previous_response_id": _text, "store": st.booleans(), "stream": st.booleans()})


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=_bodies)
def test_fuzzed_responses_bodies_never_get_a_5xx(gw, claude_stub, body):
    response = httpx.post(gw.base_url + "/responses", json=body, timeout=10,
                          headers={"authorization": f"Bearer {KEY_A}"})
    assert response.status_code < 500, (body, response.text[:500])
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
