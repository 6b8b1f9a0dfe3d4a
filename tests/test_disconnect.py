"""A caller that hangs up stops the upstream work and is charged only for what was generated.

ASGI servers drop writes to a closed connection silently, so without watching for
`http.disconnect` the relay would read the whole upstream stream (money on a managed API, GPU time
on the engine) and charge for all of it. Checked with both servers, both OpenAI transports and the
bundled engine, for streamed and non-streamed calls.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess

POLICY = """
    targets:
      via-sdk:
        provider: openai
        model: gpt-4o-mini
        base_url: {base_url}
        api_key_env: STUB_OPENAI_KEY
      via-bytes:
        provider: openai
        transport: passthrough
        model: gpt-4o-mini
        base_url: {base_url}
        api_key_env: STUB_OPENAI_KEY
      engine:
        provider: selfhost
        model: tiny-llama
        embedded: {{max_num_seqs: 4, max_model_len: 1024}}
    models:
      sdk: {{targets: [via-sdk]}}
      bytes: {{targets: [via-bytes]}}
      local: {{targets: [engine]}}
"""
WORDS = " ".join(f"w{i}" for i in range(60))  # 60 chunks, 50 ms apart: a 3 s stream


def spent(gw) -> int:
    usage = httpx.get(gw.base_url + "/usage", headers={"authorization": f"Bearer {gw.dev_key}"}, timeout=5).json()
    return usage["windows"]["tokens_per_day"]["spent"]


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module", params=["granian", "uvicorn"])
def gw(request, tmp_path_factory, _module_stub):
    path = write_policy(tmp_path_factory.mktemp("disconnect"), POLICY.format(base_url=_module_stub.base_url))
    with GatewayProcess(path, server=request.param) as proc:
        yield proc


def _hang_up_after_first_chunk(gw, model: str, **fields) -> None:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "go"}], **fields}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, timeout=10,
                      headers={"authorization": f"Bearer {gw.dev_key}"}) as response:
        assert response.status_code == 200
        next(response.iter_bytes())  # the first chunk, then hang up


@pytest.mark.parametrize("model", ["sdk", "bytes"])
def test_stream_hang_up_cancels_the_upstream_and_charges_what_was_delivered(gw, openai_stub, model):
    control = openai_stub.control
    control.reply, control.chunk_delay = WORDS, 0.05
    before = spent(gw)
    _hang_up_after_first_chunk(gw, model)
    wait_for(lambda: control.streams_aborted == 1, timeout=3)
    assert (control.streams_aborted, control.streams_finished) == (1, 0), "the upstream stream was closed early"
    wait_for(lambda: spent(gw) > before)
    charged = spent(gw) - before
    assert 0 < charged < 20, f"charged {charged} tokens: the prompt and a chunk or two, not the 60-word answer"


def test_non_streamed_hang_up_cancels_the_upstream_call(gw, openai_stub):
    control = openai_stub.control
    control.delay_seconds = 2.0
    body = {"model": "bytes", "messages": [{"role": "user", "content": "slow"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.base_url + "/chat/completions", json=body, timeout=0.5,
                   headers={"authorization": f"Bearer {gw.dev_key}"})
    before = len(control.requests)
    time.sleep(2.5)
    assert len(control.requests) == before  # nothing retried behind the caller's back


def test_engine_sequence_is_aborted_on_hang_up(gw):
    before = spent(gw)
    _hang_up_after_first_chunk(gw, "local", max_tokens=900)
    wait_for(lambda: spent(gw) > before, timeout=10)
    charged = spent(gw) - before
    assert 0 < charged < 60, f"charged {charged} tokens for a 900-token generation cut after one chunk"
    # The engine is free again at once: a short request is not queued behind 900 tokens of decode.
    started = time.monotonic()
    reply = httpx.post(gw.base_url + "/chat/completions", timeout=30, headers={"authorization": f"Bearer {gw.dev_key}"},
                       json={"model": "local", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200 and time.monotonic() - started < 10
