"""Routing decided once per conversation, through two real gateway replicas sharing Redis: a
multi-turn chat, a Claude Code Messages tool loop and a Codex Responses tool loop keep their
model across turns and replicas; a new user turn escalates; a failover moves the conversation.
Requests alternate between the replicas, so every kept decision was read from Redis."""

from __future__ import annotations

import uuid

import anthropic
import openai
import pytest

from tests import agent_shapes as shapes
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.openai_stub import OpenAIStub, StubControl

REDIS_URL = "redis://127.0.0.1:6379/0"
EASY = "Add a friendly one-line greeting to the top of README.md"
HARD = ("Refactor the scheduler to support preemption with priority classes; design the data structures, "
        "prove it never starves a sequence, and write tests.")

POLICY = """
version: 2
targets:
  frontier:
    provider: openai
    model: big-model
    base_url: {frontier}
    api_key_env: STUB_OPENAI_KEY
    pricing: {{input: 3.0, output: 15.0}}
    timeouts: {{connect: 2, first_token: 5, total: 10}}
  cheap:
    provider: openai
    model: small-model
    base_url: {cheap}
    api_key_env: STUB_OPENAI_KEY
    pricing: {{input: 0.15, output: 0.6}}
    timeouts: {{connect: 2, first_token: 5, total: 10}}
models:
  fast: {{targets: [cheap]}}
default_model: fast
retry: {{attempts: 1}}
routes:
  - name: auto-hard
    match: {{models: [auto], difficulty: {{hard: true}}}}
    targets: [{{target: frontier}}]
    fallbacks: [cheap]
  - name: auto-easy
    match: {{models: [auto], difficulty: {{hard: false}}}}
    targets: [{{target: cheap}}]
    fallbacks: [frontier]
"""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    with OpenAIStub(StubControl(api_key="sk-upstream")) as frontier, OpenAIStub(StubControl(api_key="sk-upstream")) as cheap:
        policy = write_policy(tmp_path_factory.mktemp("sticky"),
                              POLICY.format(frontier=frontier.base_url, cheap=cheap.base_url))
        prefix = f"gw-sticky-{uuid.uuid4().hex[:8]}:"
        args = ["--redis-prefix", prefix]
        with GatewayProcess(policy, redis_url=REDIS_URL, extra_args=args) as a, \
                GatewayProcess(policy, redis_url=REDIS_URL, extra_args=args) as b:
            yield (a, b), frontier.control


def _chat(gw: GatewayProcess, messages: list[dict]) -> dict[str, str]:
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages, max_tokens=20)
    raw.parse()
    return dict(raw.headers)


def _messages(gw: GatewayProcess, body: dict) -> dict[str, str]:
    client = anthropic.Anthropic(base_url=gw.root_url, api_key=gw.dev_key, max_retries=0)
    with client.messages.with_streaming_response.create(**body) as response:
        assert response.status_code == 200
        events = list(response.iter_lines())
        assert any("message_stop" in line for line in events), events[-5:]
        return dict(response.headers)


def _responses(gw: GatewayProcess, body: dict) -> dict[str, str]:
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0)
    with client.responses.with_streaming_response.create(**body) as response:
        assert response.status_code == 200
        events = list(response.iter_lines())
        assert any("response.completed" in line for line in events), events[-5:]
        return dict(response.headers)


def _where(headers: dict[str, str]) -> tuple[str, str]:
    return headers["x-gateway-target"], headers.get("x-gateway-sticky", "")


def test_multi_turn_chat_keeps_its_model_across_replicas(replicas):
    (a, b), _ = replicas
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": HARD}]
    assert _where(_chat(a, messages)) == ("frontier", "new")
    for i, gw in enumerate((b, a, b)):
        messages += [{"role": "assistant", "content": "Here is the plan."}, {"role": "user", "content": f"Great, thanks. Write a short friendly thank-you note for team {i}."}]
        headers = _chat(gw, messages)
        assert "hard=no" in headers["x-gateway-difficulty"]  # easy on its own...
        assert _where(headers) == ("frontier", "kept")  # ...yet the conversation stays where it started


def test_messages_tool_loop_keeps_its_model_and_escalates_on_a_new_turn(replicas):
    (a, b), _ = replicas
    body = shapes.claude_code_start(EASY)
    first = _messages(a, body)
    assert _where(first) == ("cheap", "new"), first.get("x-gateway-difficulty")
    for gw, tool in ((b, "Read"), (a, "Bash"), (b, "Edit")):  # tool output full of code and tracebacks
        body = shapes.claude_code_tool_turn(body, tool, "README.md", shapes.HARD_LOOKING_OUTPUT)
        assert _where(_messages(gw, body)) == ("cheap", "kept")
    body = shapes.claude_code_user_turn(body, "Fixed the typo.", HARD)
    assert _where(_messages(a, body)) == ("frontier", "escalated")
    body = shapes.claude_code_tool_turn(body, "Read", "app/scheduler.py", "def step(self): ...")
    assert _where(_messages(b, body)) == ("frontier", "kept")
    body = shapes.claude_code_user_turn(body, "Done.", "thanks!")
    assert _where(_messages(a, body)) == ("frontier", "kept")  # never downgraded


def test_responses_tool_loop_keeps_its_model(replicas):
    (a, b), _ = replicas
    body = shapes.codex_start(HARD)
    assert _where(_responses(b, body)) == ("frontier", "new")
    for gw in (a, b, a):
        body = shapes.codex_tool_turn(body, ["pytest", "-x"], "1 passed")
        assert _where(_responses(gw, body)) == ("frontier", "kept")
    body = shapes.codex_user_turn(body, "All tests pass.", "thanks!")
    assert _where(_responses(b, body)) == ("frontier", "kept")
    # Another Codex conversation with the same words is another conversation (its prompt_cache_key).
    assert _where(_responses(a, shapes.codex_start(EASY))) == ("cheap", "new")


def test_failover_moves_the_conversation(replicas):
    (a, b), frontier = replicas
    messages = [{"role": "user", "content": HARD}]
    assert _where(_chat(a, messages)) == ("frontier", "new")
    frontier.fail_always(status=503, message="overloaded")
    try:
        messages += [{"role": "assistant", "content": "Let me look."}, {"role": "user", "content": "go on"}]
        assert _where(_chat(b, messages))[0] == "cheap"  # the frontier is down: the fallback answers
    finally:
        frontier.recover()
    # The frontier is back, but the conversation moved: inside its tool loop it stays on cheap.
    messages += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "grep", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": "call_1", "content": "scheduler.py:214"}]
    assert _where(_chat(a, messages)) == ("cheap", "kept")
    # A new user turn that needs the frontier escalates back to it.
    messages += [{"role": "assistant", "content": "Found it."}, {"role": "user", "content": HARD}]
    assert _where(_chat(b, messages)) == ("frontier", "escalated")
