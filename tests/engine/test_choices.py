"""n > 1 (forked sequences sharing the prompt's blocks, copy-on-write) and logprobs from the
model's distribution, compared with transformers."""
from __future__ import annotations

import json

import pytest
import torch

from selfhost_engine import openai_api as oa
from selfhost_engine.async_engine import AsyncEngine
from selfhost_engine.sequence import SamplingParams

from .conftest import hf_greedy

GREEDY = dict(temperature=0.0, ignore_eos=True, detokenize=False)
ATOL = 1e-4    # float32 on CPU: the engine's paged attention vs transformers' SDPA


def _hf_logprobs(model, prompt: list[int], out: list[int]) -> torch.Tensor:
    """log_softmax of transformers' logits at each generated position: [len(out), V]."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + out])).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits.float(), dim=-1)


def test_n_forks_share_prompt_blocks_copy_on_write_and_match_generate(make_engine, hf_model):
    eng = make_engine(block_size=4, num_blocks=64)
    prompt = list(range(40, 54))                    # 14 tokens: 3 full blocks + a partly filled one
    eng.add_request(prompt, SamplingParams(max_tokens=10, n=3, **GREEDY), request_id="r")
    eng.step()                                      # prefill, then fork
    head = eng.seqs["r"]
    kids = head.children
    assert [k.index for k in kids] == [1, 2] and all(k.group_id == "r" for k in kids)
    assert all(k.block_table == head.block_table for k in kids)
    assert all(eng.block_manager.blocks[b].ref_count == 3 for b in head.block_table)
    eng.step()                                      # each choice writes into the shared tail block
    tails = {s.block_table[3] for s in (head, *kids)}
    assert len(tails) == 3                          # copied on write
    assert all(s.block_table[:3] == head.block_table[:3] for s in kids)   # full prompt blocks still shared
    outs = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                outs[o.index] = (o.seq.output_token_ids, o.request_finished)
    want = hf_greedy(hf_model, prompt, 10)
    assert [outs[i][0] for i in range(3)] == [want] * 3
    assert sum(f for _, f in outs.values()) == 1    # the request finishes once, with its last choice
    eng.block_manager.check_no_leaks()


def test_n_with_preemption_and_abort(make_engine, hf_model):
    eng = make_engine(block_size=4, num_blocks=16, max_num_batched_tokens=8)
    prompts = [list(range(60, 73)), list(range(100, 110))]
    rids = [eng.add_request(p, SamplingParams(max_tokens=12, n=2, **GREEDY)) for p in prompts]
    done: dict = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                done[(o.request_id, o.index)] = o.seq.output_token_ids
    assert eng.scheduler.num_preemptions > 0
    for rid, p in zip(rids, prompts):
        want = hf_greedy(hf_model, p, 12)
        assert done[(rid, 0)] == done[(rid, 1)] == want
    rid = eng.add_request(prompts[0], SamplingParams(max_tokens=30, n=3, temperature=1.0))
    for _ in range(3):
        eng.step()
    assert len(eng.seqs[rid].children) == 2 and eng.abort(rid)
    eng.block_manager.check_no_leaks()


def test_logprobs_are_the_models_distribution(make_engine, hf_model):
    eng = make_engine(block_size=4, num_blocks=64)
    prompt = list(range(200, 217))
    for temp in (0.0, 1.7):       # temperature changes sampling, never the reported logprobs
        eng.add_request(prompt, SamplingParams(max_tokens=6, temperature=temp, seed=3, logprobs=5,
                                               ignore_eos=True, detokenize=False), request_id=f"t{temp}")
        lps, toks = [], []
        while eng.has_unfinished():
            for o in eng.step():
                lps += o.logprobs
                toks += o.new_token_ids
        ref = _hf_logprobs(hf_model, prompt, toks)
        assert [x.token_id for x in lps] == toks
        chosen = torch.tensor([x.logprob for x in lps])
        assert torch.allclose(chosen, ref.gather(1, torch.tensor(toks)[:, None]).squeeze(1), atol=ATOL)
        for x, row in zip(lps, ref):
            v, i = row.topk(5)
            assert list(x.top) == i.tolist()
            assert torch.allclose(torch.tensor(list(x.top.values())), v, atol=ATOL)


@pytest.fixture(scope="module")
def aengine(tiny_model_dir):
    eng = AsyncEngine.from_model_dir(tiny_model_dir, block_size=4, num_blocks=128, max_model_len=256,
                                     dtype="float32", device="cpu")
    yield eng
    eng.shutdown()


async def test_openai_shapes_for_n_and_logprobs(aengine, hf_model, tokenizer):
    msgs = [{"role": "user", "content": "What is two plus two?"}]
    body = {"messages": msgs, "n": 2, "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 3,
            "ignore_eos": True}
    r = await oa.chat_completion(aengine, body)
    assert [c["index"] for c in r["choices"]] == [0, 1] and r["usage"]["completion_tokens"] == 10
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    toks = hf_greedy(hf_model, ids, 5)
    ref = _hf_logprobs(hf_model, ids, toks)
    for c in r["choices"]:
        content = c["logprobs"]["content"]
        assert [e["token"] for e in content] == [tokenizer.decode([t]) for t in toks]
        got = torch.tensor([e["logprob"] for e in content])
        assert torch.allclose(got, ref.max(dim=-1).values, atol=ATOL)
        assert all(len(e["top_logprobs"]) == 3 and e["bytes"] == list(e["token"].encode()) for e in content)
    chunks = [json.loads(b) async for b in oa.chat_completion_stream(aengine, {**body, "stream": True})]
    per = {0: [], 1: []}
    for ch in chunks:
        for c in ch["choices"]:
            per[c["index"]] += (c["logprobs"] or {"content": []})["content"]
    assert [len(v) for v in per.values()] == [5, 5]
    assert [e["logprob"] for e in per[1]] == [e["logprob"] for e in r["choices"][1]["logprobs"]["content"]]
    cr = await oa.completion(aengine, {"prompt": "Large language", "logprobs": 2, "max_tokens": 4, "n": 2,
                                       "temperature": 0.8, "seed": 1, "ignore_eos": True})
    for c in cr["choices"]:
        lp = c["logprobs"]
        assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
        assert len(lp["tokens"]) == 4 and all(len(t) <= 2 for t in lp["top_logprobs"])
        assert lp["text_offset"][0] == 0
