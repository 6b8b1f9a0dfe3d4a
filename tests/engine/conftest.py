"""Shared fixtures: tiny random models built through the real save/load path, engine factories
that check for leaked KV blocks after every test."""
from __future__ import annotations

import pytest
import torch

from selfhost_engine.config import EngineConfig
from selfhost_engine.engine import LLMEngine
from selfhost_engine.tiny_model import make_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def make_engine(tiny_model_dir):
    """Build LLMEngines from the tiny model directory; after the test, assert no block leaked."""
    engines: list[LLMEngine] = []

    def _make(model_dir=None, **cfg) -> LLMEngine:
        cfg.setdefault("dtype", "float32")
        cfg.setdefault("device", "cpu")
        eng = LLMEngine(EngineConfig(model=str(model_dir or tiny_model_dir), **cfg))
        engines.append(eng)
        return eng

    yield _make
    for eng in engines:
        for rid in list(eng.seqs):
            eng.abort(rid)
        eng.block_manager.check_no_leaks()


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Reference: transformers generate, one prompt at a time, EOS ignored."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()
