"""tiny_model: builds a loadable model + tokenizer; ensure_tiny_model is idempotent and race-safe."""
from __future__ import annotations

import threading
import time

from transformers import AutoTokenizer

from selfhost_engine.async_engine import AsyncEngine
from selfhost_engine.tiny_model import ensure_tiny_model


def test_tokenizer_roundtrip_and_chat_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    s = "Hello, world! Ünïcode ✓ and code: def f(x): return x*2\n"
    assert tok.decode(tok.encode(s, add_special_tokens=False)) == s
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id is not None


def test_ensure_tiny_model_concurrent_and_idempotent(tmp_path):
    results, errors = [], []

    def build():
        try:
            results.append(ensure_tiny_model(tmp_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    path = results[0]
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]      # temp dirs cleaned up
    mtime = (path / "model.safetensors").stat().st_mtime
    assert ensure_tiny_model(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime == mtime     # not rebuilt
    # loads and answers quickly through the engine
    t0 = time.perf_counter()
    eng = AsyncEngine.from_model_dir(path, dtype="float32", device="cpu")
    try:
        import asyncio

        from selfhost_engine import openai_api as oa
        r = asyncio.run(oa.chat_completion(eng, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}))
        assert r["usage"]["completion_tokens"] <= 8
    finally:
        eng.shutdown()
    assert time.perf_counter() - t0 < 5.0
