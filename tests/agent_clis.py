"""The real agent CLIs (Claude Code, Codex) run headless against the project's stubs through a
gateway process: the setup `tests/test_agent_clis.py` drives, and the scripted upstreams.

Each CLI runs with its default settings (its default model name, every feature on) and a
throwaway HOME; only what its own documentation gives for non-interactive use is set: the
gateway's URL and key, permission to write in the working directory, and no auto-update or
telemetry traffic (there is no internet here). The upstream stubs play a model doing one tool
round: a call to the CLI's file-writing tool while the conversation holds no tool result, then a
final text once it does, each in the wire protocol's own event order.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.stubs.anthropic_stub import Reply, ToolUse

JS = Path(__file__).parent / "js"
BIN = JS / "node_modules" / ".bin"
CLAUDE, CODEX = BIN / "claude", BIN / "codex"
FINAL_TEXT = "The file is written."
FILE_NAME, FILE_TEXT = "hello.txt", "hello from the agent"
PROMPT = f"Create {FILE_NAME} containing the text: {FILE_TEXT}"
SIDE_TEXT = "side call answered"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# -- what the scripted model says ----------------------------------------------------------------

def _has_anthropic_tool_result(body: dict[str, Any]) -> bool:
    return any(isinstance(m.get("content"), list) and any(b.get("type") == "tool_result" for b in m["content"])
               for m in body.get("messages") or [])


def claude_responder(workdir: Path, *, side_call: bool = False):
    """Anthropic upstream: the `Write` tool when it is offered and not yet used, then the final text.
    `side_call`: first an `Agent` call asking for a haiku sub-agent (Claude Code's small model),
    which Claude Code then runs through the gateway itself."""
    def respond(body: dict[str, Any]) -> Reply | None:
        tools = {t.get("name") for t in body.get("tools") or []}
        if "Write" not in tools:
            return Reply(text=SIDE_TEXT)
        results = sum(1 for m in body.get("messages") or [] if isinstance(m.get("content"), list)
                      for b in m["content"] if b.get("type") == "tool_result")
        if side_call and results == 0:
            return Reply(text="", tool_uses=[ToolUse("Agent", {
                "description": "List files", "prompt": "List the files in the working directory.",
                "subagent_type": "Explore", "model": "haiku", "run_in_background": False})])
        if results < (2 if side_call else 1):
            return Reply(text="", tool_uses=[ToolUse("Write", {"file_path": str(workdir / FILE_NAME), "content": FILE_TEXT})])
        return Reply(text=FINAL_TEXT)
    return respond


def _chat_has_tool_result(body: dict[str, Any]) -> bool:
    return any(m.get("role") == "tool" for m in body.get("messages") or [])


def codex_patch() -> str:
    return f"*** Begin Patch\n*** Add File: {FILE_NAME}\n+{FILE_TEXT}\n*** End Patch\n"


def codex_exec_source() -> str:
    """What Codex's code-mode `exec` tool runs: JavaScript calling its nested `apply_patch`."""
    return f"await tools.apply_patch({json.dumps(codex_patch())});\ntext('patched');\n"


def openai_responder(workdir: Path):
    """OpenAI upstream, both protocols: the CLI's file tool first, the final text after a result.

    Chat (a translated target): Claude Code's `Write`, or Codex's tools as the gateway flattened
    them (`exec` with one `input` argument, or `apply_patch`). Responses (a verbatim target):
    Codex's code-mode `exec` custom tool, declared in an `additional_tools` item's `functions`
    namespace, called as OpenAI calls a namespaced tool."""
    def chat(body: dict[str, Any]):
        names = {(t.get("function") or {}).get("name") for t in body.get("tools") or []}
        if _chat_has_tool_result(body):
            return FINAL_TEXT, None
        if "Write" in names:
            arguments = {"file_path": str(workdir / FILE_NAME), "content": FILE_TEXT}
            name = "Write"
        elif "exec" in names:
            name, arguments = "exec", {"input": codex_exec_source()}
        elif "apply_patch" in names:
            name, arguments = "apply_patch", {"input": codex_patch()}
        else:
            return SIDE_TEXT, None
        return None, [{"id": "call_agent_1", "type": "function",
                       "function": {"name": name, "arguments": json.dumps(arguments)}}]

    def responses(body: dict[str, Any]):
        items = body.get("input") if isinstance(body.get("input"), list) else []
        if any(isinstance(i, dict) and i.get("type") in ("custom_tool_call_output", "function_call_output")
               for i in items):
            return [{"type": "message", "id": "msg_agent_final", "status": "completed", "role": "assistant",
                     "content": [{"type": "output_text", "text": FINAL_TEXT, "annotations": [], "logprobs": []}]}]
        return [{"type": "custom_tool_call", "id": "ctc_agent_1", "status": "completed", "call_id": "call_agent_1",
                 "namespace": "functions", "name": "exec", "input": codex_exec_source()}]

    def respond(api: str, body: dict[str, Any]):
        return chat(body) if api == "chat" else responses(body)
    return respond


# -- the gateway's policy -----------------------------------------------------------------------

KEYS = {"verbatim": "sk-agents-verbatim", "translated": "sk-agents-translated"}

POLICY = """
targets:
  anthropic-up:
    provider: anthropic
    model: claude-upstream
    base_url: {anthropic}
    api_key_env: AGENT_STUB_KEY
    timeouts: {{connect: 5, first_token: 60, total: 120}}
  openai-up:
    provider: openai
    model: gpt-upstream
    base_url: {openai}
    api_key_env: AGENT_STUB_KEY
    timeouts: {{connect: 5, first_token: 60, total: 120}}
  chat-up:
    provider: selfhost
    model: chat-upstream
    base_url: {openai}
    api_key_env: AGENT_STUB_KEY
    timeouts: {{connect: 5, first_token: 60, total: 120}}
  local-engine:
    provider: selfhost
    model: tiny-llama
    embedded: {{max_num_seqs: 4, max_model_len: 32768}}
    max_output_tokens: 32
    timeouts: {{connect: 5, first_token: 120, total: 300}}
models:
  claude:
    targets: [anthropic-up]
    aliases: ["claude-opus-*", "claude-sonnet-*", "claude-fast-*"]
  codex:
    targets: [openai-up]
    aliases: ["gpt-*", "codex-*", "o3*", "o4*"]
  side:
    targets: [local-engine]
    aliases: ["claude-haiku-*", "claude-3-5-haiku-*"]
    max_tokens: 64
    output: {{over: clamp}}
routes:
  - name: claude-translated
    match: {{models: [claude], tenants: [translated]}}
    targets: [{{target: chat-up}}]
  - name: codex-translated
    match: {{models: [codex], tenants: [translated]}}
    targets: [{{target: chat-up}}]
tenants:
  verbatim: {{keys: ["{verbatim}"]}}
  translated: {{keys: ["{translated}"]}}
limits:
  max_body_bytes: 8388608
  max_prompt_tokens: 400000
  max_tokens: 200000
"""


def policy_text(anthropic_url: str, openai_url: str) -> str:
    return POLICY.format(anthropic=anthropic_url, openai=openai_url,
                         **{tenant: key_hash(key) for tenant, key in KEYS.items()})


# -- running a CLI ------------------------------------------------------------------------------

@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    workdir: Path

    def written(self) -> str | None:
        path = self.workdir / FILE_NAME
        return path.read_text().strip() if path.exists() else None


def _quiet_env(home: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")}
    return {**keep, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "NO_COLOR": "1", "CI": "1"}


def run_claude(gateway_root: str, key: str, workdir: Path, home: Path, timeout: float = 180) -> Run:
    """`claude -p` (print mode) against the gateway, Claude Code's documented variables for a
    custom endpoint and for machines without internet (no auto-updater, telemetry or error
    reports); `--permission-mode acceptEdits` lets its Write tool work unattended."""
    env = {**_quiet_env(home), "ANTHROPIC_BASE_URL": gateway_root, "ANTHROPIC_API_KEY": key,
           "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1"}
    result = subprocess.run([str(CLAUDE), "-p", PROMPT, "--permission-mode", "acceptEdits"], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(result.returncode, result.stdout, result.stderr, workdir)


CODEX_CONFIG = """
model_provider = "gateway"
check_for_update_on_startup = false

[model_providers.gateway]
name = "hybrid-gateway"
base_url = "{base_url}"
env_key = "GATEWAY_KEY"
wire_api = "responses"

[analytics]
enabled = false
"""


def run_codex(gateway_base: str, key: str, workdir: Path, home: Path, timeout: float = 180) -> Run:
    """`codex exec` with a custom model provider (its documented headless mode): Responses wire
    API, base URL the gateway; `--sandbox workspace-write` lets its patch tool write the file."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(base_url=gateway_base))
    env = {**_quiet_env(home), "CODEX_HOME": str(codex_home), "GATEWAY_KEY": key}
    result = subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "workspace-write", PROMPT],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    return Run(result.returncode, result.stdout, result.stderr, workdir)
