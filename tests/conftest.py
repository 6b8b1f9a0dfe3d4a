from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.gateway_proc import GatewayProcess
from tests.stubs.openai_stub import OpenAIStub, StubControl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def openai_stub():
    with OpenAIStub(StubControl(api_key="sk-upstream")) as stub:
        yield stub


def write_policy(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def stub_policy(tmp_path, openai_stub, monkeypatch):
    """A policy with one OpenAI target (the stub) behind public model `gpt-test`."""
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-upstream")
    return write_policy(tmp_path, f"""
        targets:
          stub-openai:
            provider: openai
            model: gpt-4o-mini
            base_url: {openai_stub.base_url}
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
    """)


@pytest.fixture
def gateway(stub_policy):
    with GatewayProcess(stub_policy) as proc:
        yield proc
