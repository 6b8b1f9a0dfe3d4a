"""Request shapes of the coding agents, as they arrive at the gateway (see NOTES: what the agent
CLIs send, 2026-12): Claude Code on `/v1/messages` and Codex on `/v1/responses`, with a long
system prompt, ~20 tools, tool calls and tool results, and the context blocks each client
injects into user turns. Builders return plain dicts; tests grow them turn by turn.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

_RULES = [
    "You are an interactive CLI tool that helps users with software engineering tasks. Use the instructions "
    "below and the tools available to you to assist the user.",
    "IMPORTANT: Assist with defensive security tasks only. Refuse to create, modify, or improve code that may "
    "be used maliciously. Allow security analysis, detection rules, vulnerability explanations and defensive tools.",
    "# Tone and style\nYou should be concise, direct, and to the point. When you run a non-trivial bash command, "
    "you should explain what the command does and why you are running it. Output text to communicate with the "
    "user; all text you output outside of tool use is displayed to the user.",
    "# Proactiveness\nYou are allowed to be proactive, but only when the user asks you to do something. Doing the "
    "right thing when asked, including taking actions and follow-up actions, and not surprising the user with "
    "actions you take without asking.",
    "# Following conventions\nWhen making changes to files, first understand the file's code conventions. Mimic "
    "code style, use existing libraries and utilities, and follow existing patterns. NEVER assume that a given "
    "library is available, even if it is well known. Check package.json, cargo.toml or pyproject.toml first.",
    "# Task Management\nYou have access to the TodoWrite tools to help you manage and plan tasks. Use these tools "
    "VERY frequently to ensure that you are tracking your tasks and giving the user visibility into your progress.",
    "# Doing tasks\nThe user will primarily request you perform software engineering tasks. This includes solving "
    "bugs, adding new functionality, refactoring code, explaining code, and more. Use the available search tools "
    "to understand the codebase and the user's query. Implement the solution using all tools available to you. "
    "Verify the solution if possible with tests. NEVER assume specific test framework or test script.",
    "# Tool usage policy\nWhen doing file search, prefer to use the Task tool in order to reduce context usage. "
    "You have the capability to call multiple tools in a single response. When multiple independent pieces of "
    "information are requested, batch your tool calls together for optimal performance.",
    "# Committing changes with git\nOnly create commits when requested by the user. If unclear, ask first. NEVER "
    "update the git config. NEVER run destructive git commands (push --force, hard reset) unless the user "
    "explicitly requests them. Never skip hooks (--no-verify) unless the user explicitly requests it.",
    "# Code References\nWhen referencing specific functions or pieces of code include the pattern "
    "`file_path:line_number` to allow the user to easily navigate to the source code location.",
]
SYSTEM_PROMPT = "\n\n".join(_RULES * 6)  # ~19k characters, like the real one

_TOOL_NAMES = ["Task", "Bash", "Glob", "Grep", "ExitPlanMode", "Read", "Edit", "MultiEdit", "Write", "NotebookEdit",
               "WebFetch", "TodoWrite", "WebSearch", "BashOutput", "KillShell", "SlashCommand", "Skill",
               "ListMcpResources", "ReadMcpResource", "AskUserQuestion", "LSP", "EnterPlanMode"]


def _schema(name: str) -> dict[str, Any]:
    return {"type": "object", "$schema": "http://json-schema.org/draft-07/schema#", "additionalProperties": False,
            "properties": {"command" if name == "Bash" else "file_path": {"type": "string", "description":
                           f"The argument of {name}. Use absolute paths; relative paths are not supported."},
                           "description": {"type": "string", "description": "Clear, concise description, 5-10 words."},
                           "timeout": {"type": "number", "description": "Optional timeout in milliseconds (max 600000)"}},
            "required": ["command" if name == "Bash" else "file_path"]}


CLAUDE_TOOLS = [{"name": n, "description": f"{n}: " + _RULES[i % len(_RULES)], "input_schema": _schema(n)}
                for i, n in enumerate(_TOOL_NAMES)]


def _reminder(text: str) -> dict[str, Any]:
    return {"type": "text", "text": f"<system-reminder>\n{text}\n</system-reminder>"}


def claude_code_start(ask: str, *, model: str = "auto", session: str | None = None) -> dict[str, Any]:
    """Claude Code's first request of a task: 3-block system with cache_control, ~22 tools,
    adaptive thinking, a session id in metadata.user_id, and context reminders around the ask."""
    session = session or str(uuid.uuid4())
    return {
        "model": model, "max_tokens": 32000, "stream": True,
        "metadata": {"user_id": f"user_{'ab' * 32}_account_{uuid.uuid4()}_session_{session}"},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "<env>\nWorking directory: /home/dev/project\nIs directory a git repo: Yes\n"
                                     "Platform: linux\n</env>", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": CLAUDE_TOOLS,
        "thinking": {"type": "enabled", "budget_tokens": 4000},
        "messages": [{"role": "user", "content": [
            _reminder("As you answer the user's questions, you can use the following context:\n# claudeMd\n"
                      "Codebase and user instructions are shown below. Be sure to adhere to these instructions.\n"
                      "Contents of /home/dev/project/CLAUDE.md: run `make test` before committing; Python 3.11."),
            {"type": "text", "text": ask},
            _reminder("The TodoWrite tool hasn't been used recently. Consider using it to track progress."),
        ]}],
    }


def claude_code_tool_turn(body: dict[str, Any], tool: str, argument: str, result: str) -> dict[str, Any]:
    """The next request of the tool loop: the model's thinking + tool_use, then Claude Code's
    tool_result (with a reminder block, as it sends them)."""
    body = copy.deepcopy(body)
    call_id = "toolu_" + uuid.uuid4().hex[:24]
    body["messages"].append({"role": "assistant", "content": [
        {"type": "thinking", "thinking": "I should look at the file first.", "signature": "EqQBCkYIBxgCKkA" + "x" * 80},
        {"type": "text", "text": f"Let me use {tool}."},
        {"type": "tool_use", "id": call_id, "name": tool, "input": {"file_path" if tool != "Bash" else "command": argument}},
    ]})
    body["messages"].append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call_id, "content": result},
        _reminder("Note: the file was modified by the user or a linter since it was last read."),
    ]})
    return body


def claude_code_user_turn(body: dict[str, Any], answer: str, ask: str) -> dict[str, Any]:
    """The model's final answer to the last ask, then the user's next ask."""
    body = copy.deepcopy(body)
    body["messages"].append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    body["messages"].append({"role": "user", "content": [{"type": "text", "text": ask}]})
    return body


CODEX_INSTRUCTIONS = SYSTEM_PROMPT.replace("Claude Code", "Codex")
CODEX_TOOLS = (
    [{"type": "function", "name": "shell", "description": "Runs a shell command and returns its output.",
      "strict": False, "parameters": {"type": "object", "properties": {
          "command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"},
          "timeout_ms": {"type": "number"}}, "required": ["command"], "additionalProperties": False}},
     {"type": "function", "name": "update_plan", "description": "Updates the task plan.", "strict": False,
      "parameters": {"type": "object", "properties": {"plan": {"type": "array", "items": {"type": "object"}}},
                     "required": ["plan"], "additionalProperties": False}},
     {"type": "custom", "name": "apply_patch", "description": "Use the `apply_patch` tool to edit files.",
      "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch hunk+ end_patch"}}]
    + [{"type": "function", "name": f"mcp__repo__{name}", "description": f"{name} in the repository index.",
        "strict": False, "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                        "required": ["query"], "additionalProperties": False}}
       for name in ("search", "symbols", "references", "definition", "outline", "blame", "history", "grep",
                    "tests", "coverage", "deps", "owners", "issues", "docs", "lint", "format", "build")]
)


def _message(role: str, text: str) -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


def codex_start(ask: str, *, model: str = "auto", conversation: str | None = None) -> dict[str, Any]:
    """Codex's first request: streamed Responses, store false, developer instructions, AGENTS.md
    and environment context as user messages, ~20 tools, encrypted reasoning, prompt_cache_key."""
    return {
        "model": model, "stream": True, "store": False, "parallel_tool_calls": False,
        "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "medium", "summary": "auto"},
        "prompt_cache_key": conversation or str(uuid.uuid4()), "tool_choice": "auto", "tools": CODEX_TOOLS,
        "input": [
            _message("developer", CODEX_INSTRUCTIONS),
            _message("user", "# AGENTS.md instructions for /home/dev/project\n\n<INSTRUCTIONS>\nRun `make test` "
                             "before you finish. Keep functions small.\n</INSTRUCTIONS>"),
            _message("user", "<environment_context>\n  <cwd>/home/dev/project</cwd>\n  <approval_policy>never"
                             "</approval_policy>\n  <sandbox_mode>workspace-write</sandbox_mode>\n"
                             "</environment_context>"),
            _message("user", ask),
        ],
    }


def codex_tool_turn(body: dict[str, Any], command: list[str], output: str) -> dict[str, Any]:
    """The next request of the tool loop: the reasoning item and function call, then its output."""
    body = copy.deepcopy(body)
    call_id = "call_" + uuid.uuid4().hex[:24]
    body["input"] += [
        {"type": "reasoning", "id": "rs_" + uuid.uuid4().hex, "summary": [], "encrypted_content": "gAAAAB" + "z" * 120},
        {"type": "function_call", "name": "shell", "arguments": '{"command": %s}' % str(command).replace("'", '"'),
         "call_id": call_id},
        {"type": "function_call_output", "call_id": call_id, "output": output},
    ]
    return body


def codex_user_turn(body: dict[str, Any], answer: str, ask: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["input"] += [_message("assistant", answer), _message("user", ask)]
    return body


# Tool output that reads as hard on its own (code, a traceback): must not make the ask "hard".
HARD_LOOKING_OUTPUT = (
    "Traceback (most recent call last):\n  File \"/home/dev/project/app/scheduler.py\", line 214, in step\n"
    "    for seq in self.running: assert seq.blocks, 'no blocks'\nAssertionError: no blocks\n"
    "```python\ndef step(self):\n    # prove the invariant: every running sequence holds at least one block\n"
    "    for seq in self.running:\n        if not seq.blocks and self.free() == 0:\n            self.preempt(seq)\n```\n"
) * 20
