"""Upstreams that hang before answering, or answer 200 with garbage: both are failed attempts.

A hung target fails over after its `first_token` deadline, streamed or not (not after `total`
per retry), and a 200 whose body is not the protocol's JSON is never passed to the caller: it
fails over (and counts against the target's breaker), or ends a started stream with an error.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess

POLICY = """
    targets:
      primary:
        provider: {provider}
        {transport}
        model: gpt-4o-mini
        base_url: {base_url}
        api_key_env: STUB_OPENAI_KEY
        timeouts: {{connect: 2, first_token: 1, total: 30}}
      fallback:
        provider: selfhost
        model: gpt-4o-mini
        base_url: {base_url}
        api_key_env: STUB_OPENAI_KEY
    models:
      m:
        targets: [primary, fallback]
    retry: {{attempts: 3, backoff_base: 0.05, backoff_max: 0.1}}
"""


@pytest.fixture(scope="module", params=["sdk", "passthrough"])
def gw(request, tmp_path_factory, _module_stub):
    transport = "transport: passthrough" if request.param == "passthrough" else ""
    text = POLICY.format(provider="openai", transport=transport, base_url=_module_stub.base_url)
    with GatewayProcess(write_policy(tmp_path_factory.mktemp("faults"), text)) as proc:
        yield proc


@pytest.fixture
def client(gw, openai_stub):
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.dev_key, max_retries=0, timeout=20)


def test_hung_primary_fails_over_after_first_token_not_total(client, openai_stub):
    openai_stub.control.fail_next(3, status=200, hang_seconds=4)  # the primary's three attempts hang
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "hi"}])
    elapsed = time.monotonic() - started
    assert raw.headers["x-gateway-target"] == "fallback" and raw.headers["x-gateway-fallbacks"] == "primary"
    assert elapsed < 3.9, f"{elapsed:.1f} s: three 1 s first-token deadlines, not the hang (nor 3 x 30 s)"


@pytest.mark.parametrize("stream", [False, True])
def test_garbage_200_fails_over_and_never_reaches_the_caller(client, openai_stub, stream):
    openai_stub.control.fail_next(3, garbage=True)
    raw = client.chat.completions.with_raw_response.create(model="m", stream=stream,
                                                           messages=[{"role": "user", "content": "hello"}])
    assert raw.headers["x-gateway-target"] == "fallback" and raw.headers["x-gateway-fallbacks"] == "primary"
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "echo: hello"
    else:
        assert raw.parse().choices[0].message.content == "echo: hello"


def test_garbage_everywhere_is_a_503_not_a_200(gw, openai_stub):
    openai_stub.control.fail_always(garbage=True)
    response = httpx.post(gw.base_url + "/chat/completions", timeout=20, headers={"authorization": f"Bearer {gw.dev_key}"},
                          json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 503 and "not a valid answer" in response.text
