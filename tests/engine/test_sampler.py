"""Sampling: seeds, top-k, top-p, stop strings, stop token ids, max_tokens, ignore_eos."""
from __future__ import annotations

import pytest
import torch

from selfhost_engine.sampler import Sampler
from selfhost_engine.sequence import SamplingParams, Sequence


def _seq(**p) -> Sequence:
    return Sequence("r", [1], SamplingParams(**p))


def test_seeded_sampling_is_reproducible_whatever_the_batch(make_engine):
    eng = make_engine(block_size=4, num_blocks=64)
    prompt = list(range(5, 20))
    p = SamplingParams(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    alone = eng.generate([prompt], p)[0]["token_ids"]
    others = [SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)] * 2
    batched = eng.generate([list(range(40, 47)), prompt, list(range(60, 90))], [others[0], p, others[1]])[1]["token_ids"]
    assert alone == batched
    other_seed = eng.generate([prompt], SamplingParams(temperature=1.0, seed=99, max_tokens=16, ignore_eos=True))[0]
    assert other_seed["token_ids"] != alone


def test_top_k_restricts_to_k_best():
    torch.manual_seed(0)
    logits = torch.randn(1, 50)
    top3 = set(logits[0].topk(3).indices.tolist())
    s = Sampler(seed=0)
    seqs = [_seq(temperature=5.0, top_k=3, seed=i) for i in range(300)]
    toks = s(logits.expand(300, -1).contiguous(), seqs)
    assert set(toks) <= top3
    assert len(set(toks)) == 3          # high temperature: all three actually show up


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])
    logits = probs.log()
    s = Sampler(seed=0)
    seqs = [_seq(temperature=1.0, top_p=0.7, seed=i) for i in range(400)]
    toks = s(logits.expand(400, -1).contiguous(), seqs)
    assert set(toks) == {0, 1}
    frac0 = toks.count(0) / len(toks)
    assert 0.52 < frac0 < 0.73           # renormalised 0.5/0.8 = 0.625


def test_greedy_and_top_k_1_equal_argmax():
    logits = torch.randn(4, 30)
    s = Sampler()
    assert s(logits, [_seq(temperature=0.0)] * 4) == logits.argmax(-1).tolist()
    assert s(logits, [_seq(temperature=0.8, top_k=1)] * 4) == logits.argmax(-1).tolist()


def _greedy(eng, prompt, **kw):
    return eng.generate([prompt], SamplingParams(temperature=0.0, **kw))[0]


def test_stop_strings_truncate_text(make_engine):
    eng = make_engine()
    prompt = list(range(100, 120))
    full = _greedy(eng, prompt, max_tokens=30, ignore_eos=True)
    text = full["text"]
    assert len(text) > 12
    stop = text[8:11]
    cut = text.find(stop)
    out = _greedy(eng, prompt, max_tokens=30, ignore_eos=True, stop=[stop, "\x00never"])
    assert out["finish_reason"] == "stop"
    assert out["text"] == text[:cut]
    assert len(out["token_ids"]) < 30


def test_stop_token_ids_and_max_tokens(make_engine):
    eng = make_engine()
    prompt = list(range(200, 215))
    full = _greedy(eng, prompt, max_tokens=20, ignore_eos=True)
    assert full["finish_reason"] == "length" and len(full["token_ids"]) == 20
    stop_tok = full["token_ids"][5]
    first = full["token_ids"].index(stop_tok)
    out = _greedy(eng, prompt, max_tokens=20, ignore_eos=True, stop_token_ids=[stop_tok])
    assert out["finish_reason"] == "stop"
    assert out["token_ids"] == full["token_ids"][:first + 1]
    assert len(_greedy(eng, prompt, max_tokens=3, ignore_eos=True)["token_ids"]) == 3


def test_eos_and_ignore_eos(make_engine):
    eng = make_engine()
    prompt = list(range(300, 310))
    full = _greedy(eng, prompt, max_tokens=15, ignore_eos=True)["token_ids"]
    eng.eos_token_ids = {full[4]}       # pretend this model's EOS is the 5th greedy token
    first = full.index(full[4])
    stopped = _greedy(eng, prompt, max_tokens=15)
    assert stopped["finish_reason"] == "stop" and stopped["token_ids"] == full[:first + 1]
    ignored = _greedy(eng, prompt, max_tokens=15, ignore_eos=True)
    assert ignored["finish_reason"] == "length" and ignored["token_ids"] == full
