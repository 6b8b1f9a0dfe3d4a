from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.gateway_proc import GatewayProcess
from tests.stubs.anthropic_stub import AnthropicStub
from tests.stubs.openai_stub import OpenAIStub, StubControl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("STUB_OPENAI_KEY", "sk-upstream")


def write_policy(directory: Path, text: str, name: str = "policy.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def _module_stub():
    with OpenAIStub(StubControl(api_key="sk-upstream")) as stub:
        yield stub


@pytest.fixture(scope="module")
def claude_stub(request):
    """An Anthropic Messages stub for the module, checking the module's own `ANTHROPIC_KEY`."""
    with AnthropicStub(api_key=request.module.ANTHROPIC_KEY) as stub:
        yield stub


@pytest.fixture
def openai_stub(_module_stub):
    """The module's OpenAI stub, with its script and records reset for each test."""
    control = _module_stub.control
    control.recover()
    control.requests.clear()
    control.headers.clear()
    control.reply = None
    control.refusal = None
    control.usage_every_chunk = False
    control.responder = None
    control.chunks = None
    control.delay_seconds = 0.0
    control.chunk_delay = 0.0
    control.streams_finished = control.streams_aborted = 0
    yield _module_stub


STUB_POLICY = """
    targets:
      stub-openai:
        provider: openai
        model: gpt-4o-mini
        base_url: {base_url}
        api_key_env: STUB_OPENAI_KEY
        pricing: {{input: 0.15, cached_input: 0.075, output: 0.6}}
        timeouts: {{connect: 2, first_token: 5, total: 10}}
    models:
      gpt-test:
        targets: [stub-openai]
        max_tokens: 1000
    limits:
      max_body_bytes: 200000
      max_prompt_tokens: 20000
      max_messages: 50
"""


@pytest.fixture(scope="module")
def stub_policy(tmp_path_factory, _module_stub):
    """A policy with one OpenAI target (the stub) behind public model `gpt-test`."""
    return write_policy(tmp_path_factory.mktemp("policy"), STUB_POLICY.format(base_url=_module_stub.base_url))


@pytest.fixture(scope="module")
def gateway(stub_policy):
    with GatewayProcess(stub_policy) as proc:
        yield proc
