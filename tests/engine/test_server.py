"""The real HTTP server (uvicorn in a thread, and once as `python -m selfhost_engine serve`),
exercised with the official openai SDK."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from openai import BadRequestError, OpenAI

from selfhost_engine.async_engine import AsyncEngine
from selfhost_engine.server import create_app

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    engine = AsyncEngine.from_model_dir(tiny_model_dir, block_size=4, num_blocks=256, max_model_len=512,
                                        dtype="float32", device="cpu", served_model_name="tiny")
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(base + "/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    yield base, engine
    srv.should_exit = True
    th.join(10)
    engine.shutdown()


@pytest.fixture
def client(server):
    return OpenAI(base_url=server[0] + "/v1", api_key="x", max_retries=0)


@pytest.fixture(autouse=True)
def _no_leaks(server):
    yield
    assert server[1].wait_idle(10)
    server[1].engine.block_manager.check_no_leaks()


MSG = [{"role": "user", "content": "Write a short poem about the sea."}]


def test_chat_non_streamed(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=7, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens <= 7 and r.usage.prompt_tokens > 5
    r2 = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=7, temperature=0)
    assert r2.choices[0].message.content == r.choices[0].message.content
    assert r2.usage.prompt_tokens_details.cached_tokens > 0


def test_chat_streamed(client):
    stream = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=9, temperature=0,
                                            stream=True, stream_options={"include_usage": True}, seed=3)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason in ("length", "stop")
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    plain = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=9, temperature=0, seed=3)
    assert text == plain.choices[0].message.content


def test_completions(client):
    r = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 6
    s = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text


def test_errors_are_openai_json(server, client):
    with pytest.raises(BadRequestError) as ei:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi " * 900}])
    assert ei.value.status_code == 400 and "maximum context length" in ei.value.message
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model="tiny", messages=MSG, n=100, stream=True)   # above max_num_seqs
    r = httpx.post(server[0] + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and set(err) == {"message", "type", "param", "code"}
    r = httpx.post(server[0] + "/v1/chat/completions", json={"messages": MSG, "best_of": 3})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_value"


def test_sdk_parses_n_and_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, n=3, max_tokens=5, temperature=0.9, seed=7,
                                       logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2] and r.usage.completion_tokens == 15
    for c in r.choices:
        assert len(c.logprobs.content) == 5
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in c.logprobs.content)
    s = client.chat.completions.create(model="tiny", messages=MSG, n=2, max_tokens=4, temperature=0,
                                       logprobs=True, stream=True, extra_body={"ignore_eos": True})
    text = {0: "", 1: ""}
    for ch in s:
        for c in ch.choices:
            text[c.index] += c.delta.content or ""
    assert text[0] == text[1] != ""          # greedy: both choices agree
    cr = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=4, temperature=0,
                                   logprobs=3, extra_body={"ignore_eos": True})
    lp = cr.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == cr.choices[0].text


def test_models_health_ready_load_metrics(server, client):
    base = server[0]
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(base + "/healthz").status_code == 200
    assert httpx.get(base + "/readyz").json()["status"] == "ready"
    client.chat.completions.create(model="tiny", messages=MSG, max_tokens=3)
    load = httpx.get(base + "/load").json()
    assert set(load) >= {"waiting", "running", "queued_prefill_tokens", "active_decode_tokens", "kv_usage"}
    text = httpx.get(base + "/metrics").text
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:num_preemptions_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:time_per_output_token_seconds_bucket", "vllm:e2e_request_latency_seconds_count",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "selfhost:queue_oldest_age_seconds",
                 "selfhost:prefill_tokens_per_second", "selfhost:decode_tokens_per_second"]:
        assert name in text, name
    gen = [ln for ln in text.splitlines() if ln.startswith("vllm:generation_tokens_total")][0]
    assert float(gen.split()[-1]) >= 3


def test_disconnect_mid_stream_frees_blocks(server, client):
    base, engine = server
    aborted = engine.engine.stats.num_aborted
    stream = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=480, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})
    it = iter(stream)
    for _ in range(3):
        next(it)
    assert httpx.get(base + "/load").json()["kv_usage"] > 0
    stream.close()                                   # client goes away
    for _ in range(200):
        ld = httpx.get(base + "/load").json()
        if ld["running"] == 0 and ld["kv_usage"] == 0:
            break
        time.sleep(0.02)
    assert ld == {**ld, "running": 0, "waiting": 0, "kv_usage": 0.0}
    assert engine.engine.stats.num_aborted == aborted + 1


def test_cli_serve_subprocess(tmp_path):
    """`python -m selfhost_engine make-tiny-model` then `serve`: readiness, one request, clean stop."""
    model = tmp_path / "m"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "selfhost_engine", "make-tiny-model", str(model), "--layers", "1"],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=120)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "selfhost_engine", "serve", "--model", str(model),
                             "--port", str(port), "--threads", "1", "--max-model-len", "256",
                             "--speculative-ngram", "3"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        ok = False
        for _ in range(600):
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    ok = True
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert ok, "server never became ready"
        c = OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model="m", messages=MSG, max_tokens=4)
        assert r.usage.completion_tokens <= 4 and r.choices[0].finish_reason in ("length", "stop")
        assert "vllm:spec_decode_num_draft_tokens_total" in httpx.get(base + "/metrics").text
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
