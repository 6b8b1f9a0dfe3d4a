"""Completion prompts keep the tokenizer's special tokens (BOS), as transformers and vLLM do:
checked against `generate` on a Qwen2-shaped model whose tokenizer prepends BOS."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfhost_engine import openai_api as oa
from selfhost_engine.async_engine import AsyncEngine
from selfhost_engine.tiny_model import make_tiny_model

PROMPTS = ["The quick brown fox", "What is the capital of France?", "def fibonacci(n):", "Numbers: 0 1 2"]


@pytest.fixture(scope="module")
def bos_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("bos") / "model", arch="qwen2", add_bos=True)


@pytest.fixture(scope="module")
def bos_engine(bos_model_dir):
    eng = AsyncEngine.from_model_dir(bos_model_dir, block_size=4, num_blocks=128, max_model_len=256,
                                     dtype="float32", device="cpu")
    yield eng
    eng.shutdown()


async def test_completions_match_generate_with_bos_adding_tokenizer(bos_model_dir, bos_engine):
    tok = AutoTokenizer.from_pretrained(bos_model_dir)
    hf = AutoModelForCausalLM.from_pretrained(bos_model_dir, dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        assert enc.input_ids[0, 0].item() == tok.bos_token_id          # the tokenizer really adds BOS
        with torch.inference_mode():
            ref = hf.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                              eos_token_id=None, pad_token_id=tok.pad_token_id)
        want = tok.decode(ref[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
        r = await oa.completion(bos_engine, {"prompt": prompt, "max_tokens": 8, "temperature": 0,
                                             "ignore_eos": True})
        assert r["usage"]["prompt_tokens"] == enc.input_ids.shape[1]
        assert r["choices"][0]["text"] == want, prompt


async def test_chat_prompt_is_the_template_without_a_second_bos(bos_model_dir, bos_engine):
    tok = AutoTokenizer.from_pretrained(bos_model_dir)
    msgs = [{"role": "user", "content": "hi"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    r = await oa.chat_completion(bos_engine, {"messages": msgs, "max_tokens": 2})
    assert r["usage"]["prompt_tokens"] == len(ids)
    assert ids[0] != tok.bos_token_id
