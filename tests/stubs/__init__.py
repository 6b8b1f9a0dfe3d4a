"""Local stand-ins for upstream APIs, served over real HTTP on loopback for tests and demos."""

from tests.stubs.anthropic_stub import AnthropicStub, Reply, StubController, ToolUse, start_anthropic_stub

__all__ = ["AnthropicStub", "Reply", "StubController", "ToolUse", "start_anthropic_stub"]
