"""The Responses API on the bundled engine (embedded target, translated through the chat pivot),
driven by the official `openai` SDK against a real gateway process: create, stream, stored
continuation, and a Codex-shaped request (store false, encrypted reasoning, tools, history of
parallel function calls); and the `openai` npm package with the Vercel AI SDK (text and streams)."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.test_responses_js import run_check, script  # noqa: F401  (the node script fixture)

TOOLS = [{"type": "function", "name": "run", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def engine_gw(tmp_path_factory):
    policy = write_policy(tmp_path_factory.mktemp("responses-engine"), """
        targets:
          local-engine:
            provider: selfhost
            model: tiny-llama
            embedded: {max_num_seqs: 4, max_model_len: 1024}
            timeouts: {connect: 5, first_token: 60, total: 120}
        models:
          local: {targets: [local-engine], max_tokens: 64}
    """)
    with GatewayProcess(policy) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(engine_gw):
    return openai.OpenAI(base_url=engine_gw.base_url, api_key=engine_gw.dev_key, max_retries=0, timeout=120)


def test_create_stream_and_continue_on_the_engine(client):
    raw = client.responses.with_raw_response.create(model="local", input="Hello there", instructions="Be brief.",
                                                    max_output_tokens=6)
    first = raw.parse()
    assert raw.headers["x-gateway-target"] == "local-engine"
    assert first.object == "response" and first.output[0].type == "message" and first.instructions == "Be brief."
    assert first.usage.output_tokens == 6 and first.usage.input_tokens > 0
    assert (first.status, first.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    with client.responses.stream(model="local", input="Tell me more", previous_response_id=first.id,
                                 max_output_tokens=5) as stream:
        events = list(stream)
    assert [e.type for e in events[:4]] == ["response.created", "response.in_progress", "response.output_item.added",
                                            "response.content_part.added"]
    final = events[-1].response
    assert events[-1].type == "response.incomplete" and final.usage.output_tokens == 5
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output[0].content[0].text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    items = client.responses.input_items.list(final.id, order="asc").data
    assert [i.role for i in items] == ["user", "assistant", "user"], "the stored chain: first turn, answer, new turn"


def test_codex_shaped_request_on_the_engine(client):
    conversation = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "function_call", "call_id": "call_1", "name": "run", "arguments": '{"cmd": "ls"}'},
        {"type": "function_call", "call_id": "call_2", "name": "run", "arguments": '{"cmd": "pwd"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.py b.py"},
        {"type": "function_call_output", "call_id": "call_2", "output": "/src"},
    ]
    for turn in range(2):
        raw = client.responses.with_raw_response.create(
            model="local", input=conversation, tools=TOOLS, store=False, include=["reasoning.encrypted_content"],
            parallel_tool_calls=True, max_output_tokens=4, stream=True)
        events = list(raw.parse())
        assert events[-1].type in ("response.completed", "response.incomplete")
        assert "input.reasoning" in raw.headers["x-gateway-dropped"] and "include" in raw.headers["x-gateway-dropped"]
        conversation += [item.model_dump(exclude_none=True) for item in events[-1].response.output]
        conversation.append({"type": "message", "role": "user", "content": f"turn {turn} done"})
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(events[-1].response.id)


def test_openai_npm_and_ai_sdk_on_the_engine(script, engine_gw):  # noqa: F811
    report = run_check(script, engine_gw, "local", "basic")
    assert report["text"] and report["usage"]["output_tokens"] == 50
    assert report["eventTypes"][0] == "response.created" and report["eventTypes"][-1] == "response.incomplete"
    assert report["sequence"] == list(range(len(report["sequence"])))
    assert report["streamed"] == report["streamFinal"]
    assert report["aiText"] and report["aiUsage"]["outputTokens"] == 50 and report["aiStreamed"]
