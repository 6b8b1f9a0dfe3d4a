"""JavaScript callers of the Responses API: the official `openai` npm package and the Vercel AI
SDK's default OpenAI provider (`generateText`, `streamText`, a tool loop), against a real gateway
process on the OpenAI stub (verbatim) and on the Anthropic stub (translated); the bundled engine's
run is in tests/test_responses_engine.py (one engine load per module)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.anthropic_stub import start_anthropic_stub

JS = Path(__file__).parent / "js"


@pytest.fixture(scope="module")
def script() -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (JS / "node_modules" / "@ai-sdk" / "openai").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=300)
    return JS / "responses_check.mjs"


@pytest.fixture(scope="module")
def gw(tmp_path_factory, _module_stub):
    with start_anthropic_stub(api_key="sk-ant-test") as (claude_url, controller):
        policy = write_policy(tmp_path_factory.mktemp("responses-js"), f"""
            targets:
              stub-openai:
                provider: openai
                model: gpt-4o-mini
                base_url: {_module_stub.base_url}
                api_key_env: STUB_OPENAI_KEY
              claude:
                provider: anthropic
                model: claude-test
                base_url: {claude_url}
                api_key_env: STUB_ANTHROPIC_KEY
            models:
              gpt-test: {{targets: [stub-openai]}}
              claude-test: {{targets: [claude]}}
        """)
        with GatewayProcess(policy, env={"STUB_ANTHROPIC_KEY": "sk-ant-test"}) as proc:
            yield proc, controller


def run_check(script: Path, gw: GatewayProcess, model: str, *mode: str) -> dict:
    result = subprocess.run(["node", str(script), gw.base_url, gw.dev_key, model, *mode], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_openai_npm_and_ai_sdk_on_an_openai_target(script, gw, openai_stub):
    report = run_check(script, gw[0], "gpt-test")
    assert report["text"] == "echo: hello from javascript" and report["usage"]["output_tokens"] == 4
    assert report["eventTypes"][0] == "response.created" and report["eventTypes"][-1] == "response.completed"
    assert report["sequence"] == list(range(len(report["sequence"])))
    assert report["streamed"] == report["streamFinal"] == "echo: stream from javascript"
    assert report["toolName"] == "lookup" and report["afterTool"] == report["retrieved"] == "tool said: 42"
    assert report["inputItems"] == ["message", "function_call", "function_call_output"]
    assert report["afterDelete"] == 404
    assert report["aiText"] == "echo: hello from the ai sdk" and report["aiUsage"]["inputTokens"] > 0
    assert report["aiStreamed"] == "echo: streaming from the ai sdk" and report["aiStreamUsage"]["outputTokens"] == 6
    assert report["aiToolCalls"] == ["lookup"] and report["aiSteps"] == 2
    assert report["aiAfterTool"].startswith("tool said: ")
    # The AI SDK repeats stored assistant items by reference; the gateway expanded them itself.
    second_step = openai_stub.control.requests[-1]["input"]
    assert [i.get("type") for i in second_step] == [None, "function_call", "function_call_output"]


def test_openai_npm_and_ai_sdk_on_an_anthropic_target(script, gw):
    proc, claude = gw
    claude.reset()
    claude.reply_text("hello from javascript")
    claude.reply_text("stream from javascript")
    claude.reply_tool_use("lookup", {"text": "x"}, id="toolu_js")
    claude.reply_text("the answer is 42")
    claude.reply_text("ai sdk says hi")
    claude.reply_text("ai sdk streams")
    claude.reply_tool_use("lookup", {"text": "abc"}, id="toolu_ai")
    claude.reply_text("done with the tool")
    report = run_check(script, proc, "claude-test")
    assert report["text"] == "hello from javascript" and report["usage"]["output_tokens"] > 0
    assert report["streamed"] == report["streamFinal"] == "stream from javascript"
    assert report["eventTypes"][-1] == "response.completed"
    assert report["toolName"] == "lookup" and report["afterTool"] == "the answer is 42"
    assert report["aiText"] == "ai sdk says hi" and report["aiStreamed"] == "ai sdk streams"
    assert report["aiToolCalls"] == ["lookup"] and report["aiAfterTool"] == "done with the tool"
    tool_result = claude.last_body["messages"][-1]["content"][0]
    assert (tool_result["type"], tool_result["tool_use_id"]) == ("tool_result", "toolu_ai")
    assert "found 3" in json.dumps(tool_result["content"])

