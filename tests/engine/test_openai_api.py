"""The OpenAI protocol layer on an in-process AsyncEngine (the way the gateway embeds it)."""
from __future__ import annotations

import asyncio
import json

import pytest

from selfhost_engine import openai_api as oa
from selfhost_engine.async_engine import AsyncEngine
from selfhost_engine.errors import EngineRequestError, PromptTooLongError


@pytest.fixture(scope="module")
def aengine(tiny_model_dir):
    eng = AsyncEngine.from_model_dir(tiny_model_dir, block_size=4, num_blocks=256, max_model_len=512,
                                     dtype="float32", device="cpu", served_model_name="tiny")
    yield eng
    eng.shutdown()


@pytest.fixture(autouse=True)
def _no_leaks(aengine):
    yield
    assert aengine.wait_idle(10)
    aengine.engine.block_manager.check_no_leaks()


MSG = [{"role": "system", "content": "You are a helpful assistant."},
       {"role": "user", "content": "What is the capital of France?"}]


async def test_chat_completion_shape_and_cached_tokens(aengine):
    body = {"model": "tiny", "messages": MSG, "max_tokens": 6, "temperature": 0}
    r1 = await oa.chat_completion(aengine, body)
    assert r1["object"] == "chat.completion" and r1["choices"][0]["message"]["role"] == "assistant"
    assert r1["choices"][0]["finish_reason"] in ("length", "stop")
    u = r1["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    r2 = await oa.chat_completion(aengine, body)
    assert r2["choices"][0]["message"]["content"] == r1["choices"][0]["message"]["content"]
    assert r2["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert r2["usage"]["prompt_tokens_details"]["cached_tokens"] < r2["usage"]["prompt_tokens"]


async def test_chat_stream_chunks(aengine):
    body = {"messages": MSG, "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = [json.loads(b) async for b in oa.chat_completion_stream(aengine, body, request_id="s1")]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-s1" for c in chunks)
    content = [c for c in chunks if c["choices"]]
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in content)
    plain = await oa.chat_completion(aengine, {"messages": MSG, "max_tokens": 8, "temperature": 0})
    assert text == plain["choices"][0]["message"]["content"]


async def test_completion_and_stream(aengine):
    body = {"prompt": "The quick brown fox", "max_tokens": 5, "temperature": 0}
    r = await oa.completion(aengine, body)
    assert r["object"] == "text_completion" and r["usage"]["completion_tokens"] == 5
    parts = [json.loads(b) async for b in oa.completion_stream(aengine, {**body, "stream": True})]
    assert "".join(p["choices"][0]["text"] for p in parts) == r["choices"][0]["text"]
    assert parts[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body,code", [
    ({"messages": MSG, "n": 1000}, "invalid_request"),
    ({"messages": MSG, "top_logprobs": 2}, "invalid_request"),
    ({"messages": MSG, "logprobs": True, "top_logprobs": 21}, "invalid_request"),
    ({"messages": MSG, "temperature": "hot"}, "invalid_request"),
    ({"messages": MSG, "top_p": 1.5}, "invalid_request"),
    ({"messages": []}, "invalid_request"),
    ({"messages": MSG, "max_tokens": 600}, "context_length_exceeded"),
    ({"messages": [{"role": "user", "content": "hi " * 700}]}, "context_length_exceeded"),
])
async def test_bad_requests_raise(aengine, body, code):
    with pytest.raises(EngineRequestError) as ei:
        await oa.chat_completion(aengine, body)
    assert ei.value.code == code
    with pytest.raises(EngineRequestError):
        async for _ in oa.chat_completion_stream(aengine, {**body, "stream": True}):
            pytest.fail("a bad request must fail before any bytes")


async def test_too_long_prompt_error_is_clear(aengine):
    with pytest.raises(PromptTooLongError) as ei:
        await oa.completion(aengine, {"prompt": list(range(5, 600))})
    assert "maximum context length is 512" in str(ei.value)
    assert ei.value.to_openai()["error"]["type"] == "invalid_request_error"


async def test_cancel_mid_stream_aborts_and_frees(aengine):
    body = {"messages": MSG, "max_tokens": 450, "temperature": 0, "ignore_eos": True, "stream": True}
    aborted = aengine.engine.stats.num_aborted
    agen = oa.chat_completion_stream(aengine, body)
    got = [await agen.__anext__() for _ in range(3)]
    assert got
    assert aengine.engine.block_manager.num_free_blocks < 256
    await agen.aclose()
    # a task cancelled while awaiting a chunk aborts too
    async def consume():
        async for _ in oa.chat_completion_stream(aengine, body):
            pass
    t = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    for _ in range(200):
        if oa.load(aengine)["running"] == 0 and oa.load(aengine)["kv_usage"] == 0:
            break
        await asyncio.sleep(0.02)
    ld = oa.load(aengine)
    assert ld["running"] == 0 and ld["waiting"] == 0 and ld["kv_usage"] == 0
    assert aengine.engine.stats.num_aborted == aborted + 2


async def test_concurrent_requests_and_load(aengine):
    bodies = [{"prompt": f"Request number {i} asks about", "max_tokens": 20 + i, "temperature": 0.7, "seed": i,
               "ignore_eos": True} for i in range(6)]
    tasks = [asyncio.create_task(oa.completion(aengine, b)) for b in bodies]
    await asyncio.sleep(0.05)
    seen = oa.load(aengine)
    assert set(seen) >= {"waiting", "running", "queued_prefill_tokens", "active_decode_tokens", "kv_usage"}
    res = await asyncio.gather(*tasks)
    assert [r["usage"]["completion_tokens"] for r in res] == [20 + i for i in range(6)]
