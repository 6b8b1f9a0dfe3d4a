"""Claude Code and Codex, the real CLIs from npm at their default settings, finish a tool round
through a gateway process: verbatim to a target speaking their protocol, translated to a chat
target, and (Claude Code) with its small-model side calls on the bundled engine.

The pinned CLIs come from tests/js (`make test-deps` runs `npm ci` there); the harness and the
scripted upstreams are in tests/agent_clis.py.
"""

from __future__ import annotations

import re
import shutil

import httpx
import pytest

from tests import agent_clis as agents
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.anthropic_stub import AnthropicStub
from tests.stubs.openai_stub import OpenAIStub, StubControl

STUB_KEY = "sk-agent-stubs"
pytestmark = pytest.mark.skipif(not (agents.CLAUDE.exists() and agents.CODEX.exists()) or shutil.which("node") is None,
                                reason="the agent CLIs are not installed (make test-deps runs npm ci in tests/js)")


@pytest.fixture(scope="module")
def upstreams():
    with AnthropicStub(api_key=STUB_KEY) as anthropic_stub, OpenAIStub(StubControl(api_key=STUB_KEY)) as openai_stub:
        yield anthropic_stub, openai_stub


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstreams):
    anthropic_stub, openai_stub = upstreams
    path = write_policy(tmp_path_factory.mktemp("agents"), agents.policy_text(anthropic_stub.base_url,
                                                                              openai_stub.base_url))
    with GatewayProcess(path, env={"AGENT_STUB_KEY": STUB_KEY}) as proc:
        yield proc


@pytest.fixture
def scripted(upstreams, tmp_path):
    """Fresh stubs playing the model for a run in `tmp_path / work`."""
    anthropic_stub, openai_stub = upstreams
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    anthropic_stub.controller.reset()
    anthropic_stub.controller.responder = agents.claude_responder(workdir)
    openai_stub.control.requests.clear()
    openai_stub.control.headers.clear()
    openai_stub.control.responder = agents.openai_responder(workdir)
    yield anthropic_stub.controller, openai_stub.control, workdir, home
    openai_stub.control.responder = None


def _finished(run: agents.Run) -> None:
    assert run.returncode == 0, f"stdout: {run.stdout[-2000:]}\nstderr: {run.stderr[-3000:]}"
    assert run.written() == agents.FILE_TEXT, "the tool did not write the file"
    assert agents.FINAL_TEXT in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize("tenant", ["verbatim", "translated"])
def test_claude_code_finishes_a_tool_round(gw, scripted, tenant):
    anthropic, openai, workdir, home = scripted
    run = agents.run_claude(gw.root_url, agents.KEYS[tenant], workdir, home)
    _finished(run)
    if tenant == "verbatim":
        first = anthropic.bodies[0]
        assert first["model"] == "claude-upstream" and len(anthropic.bodies) == 2
        # Its default model's `system` turns and betas reached Anthropic as sent.
        assert "system" in [m["role"] for m in first["messages"]]
        assert "anthropic-beta" in anthropic.requests[0].headers
    else:
        assert anthropic.bodies == [] and len(openai.requests) == 2
        assert [m["role"] for m in openai.requests[0]["messages"]][:3] == ["system", "user", "system"]
        assert openai.requests[1]["messages"][-1]["role"] == "tool"


@pytest.mark.parametrize("tenant", ["verbatim", "translated"])
def test_codex_finishes_a_tool_round(gw, scripted, tenant):
    _, openai, workdir, home = scripted
    run = agents.run_codex(gw.base_url, agents.KEYS[tenant], workdir, home)
    _finished(run)
    first, second = openai.requests[:2]
    if tenant == "verbatim":  # responses-lite as sent: the tools in an `additional_tools` item, its header
        assert first["model"] == "gpt-upstream" and first["input"][0]["type"] == "additional_tools"
        assert {k.lower(): v for k, v in openai.headers[0].items()}["x-openai-internal-codex-responses-lite"] == "true"
        assert second["input"][-1]["type"] == "custom_tool_call_output"
    else:  # flattened into chat functions; the code-mode `exec` call came back as Codex's own item
        assert first["model"] == "chat-upstream" and first["tools"][0]["function"]["name"] == "exec"
        assert second["messages"][-1]["role"] == "tool" and "patch" in second["messages"][-2]["tool_calls"][0][
            "function"]["arguments"]


def _served(gw, model: str, target: str) -> float:
    metrics = httpx.get(gw.root_url + "/metrics", timeout=10).text
    pattern = rf'gateway_request_duration_seconds_count{{[^}}]*model="{model}"[^}}]*status="200"[^}}]*target="{target}"[^}}]*}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, metrics))


def test_claude_code_side_calls_run_on_the_bundled_engine(gw, scripted):
    anthropic, _, workdir, home = scripted
    anthropic.responder = agents.claude_responder(workdir, side_call=True)
    before = _served(gw, "side", "local-engine")
    run = agents.run_claude(gw.root_url, agents.KEYS["verbatim"], workdir, home)
    _finished(run)
    # The haiku sub-agent (its 32,000-token output cap clamped by the policy) was answered by the engine.
    assert _served(gw, "side", "local-engine") > before
    agent_result = next(b for m in anthropic.bodies[1]["messages"] if isinstance(m["content"], list)
                        for b in m["content"] if b.get("type") == "tool_result")
    assert "400" not in str(agent_result["content"]) and "too long" not in str(agent_result["content"])
