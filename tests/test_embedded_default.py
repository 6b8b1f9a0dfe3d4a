"""The README's serve command on a fresh machine: no policy, no Redis, no managed-API key."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import openai

from tests.gateway_proc import ROOT
from tests.stubs.openai_stub import free_port


def test_serve_with_no_configuration_answers_from_the_bundled_engine(tmp_path):
    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_DEV_KEY", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        key = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            match = re.search(r"dev tenant key .*?: (sk-gw-\S+)", log.read_text())
            if match:
                key = match.group(1)
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert key, "a dev key is generated and printed at start"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["local-embed", "local", "auto"]
        assert client.models.retrieve("local").id == "local"
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
        completion = raw.parse()
        assert raw.headers["x-gateway-target"] == "local-engine"
        assert completion.usage.completion_tokens == 8 and completion.choices[0].finish_reason == "length"
        chunks = list(client.chat.completions.create(model="local", messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=6, stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == 6
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
        assert (tmp_path / "hybrid-gateway" / "models" / "tiny-llama" / "config.json").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
