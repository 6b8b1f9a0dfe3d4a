"""Greedy outputs equal transformers' `generate` token for token, under chunked prefill,
preemption and prefix-cache hits; tenant isolation; admission; priorities; abort."""
from __future__ import annotations

import random

import pytest
import torch

from selfhost_engine.errors import EngineRequestError, PromptTooLongError
from selfhost_engine.sequence import Priority, SamplingParams

from .conftest import hf_greedy

GREEDY = dict(temperature=0.0, ignore_eos=True, detokenize=False)


def _prompts(vocab: int, seed: int = 0):
    r = random.Random(seed)
    shared = [r.randrange(4, vocab) for _ in range(13)]            # > 3 blocks of 4
    lens = [5, 37, 2, 21, 48, 9, 30, 16]
    prompts = [[r.randrange(4, vocab) for _ in range(n)] for n in lens]
    prompts += [shared + [r.randrange(4, vocab) for _ in range(n)] for n in (3, 11, 6)]
    return prompts


def test_greedy_matches_generate_with_chunking_preemption_and_prefix_hits(make_engine, hf_model):
    vocab = hf_model.config.vocab_size
    prompts = _prompts(vocab)
    max_new = [12, 20, 7, 16, 10, 25, 14, 9, 18, 11, 15]
    expected = [hf_greedy(hf_model, p, n) for p, n in zip(prompts, max_new)]

    # tiny blocks, 16-token budget (chunked prefill), 26 blocks = 104 slots (preemption)
    eng = make_engine(block_size=4, num_blocks=26, max_num_batched_tokens=16, max_num_seqs=6)
    got: dict[str, list[int]] = {}
    arrivals = {0: range(0, 4), 3: range(4, 8), 9: range(8, 9), 30: range(9, 11)}  # step -> prompt idx
    rid_of = {}
    step = 0
    while step <= max(arrivals) or eng.has_unfinished():
        for i in arrivals.get(step, ()):
            rid_of[eng.add_request(prompts[i], SamplingParams(max_tokens=max_new[i], **GREEDY))] = i
        for o in eng.step():
            if o.finished:
                got[o.request_id] = o.seq.output_token_ids
        step += 1
    for rid, i in rid_of.items():
        assert got[rid] == expected[i], f"prompt {i} diverged"
    # the mechanisms under test really ran
    assert eng.scheduler.num_preemptions > 0
    assert eng.stats.chunked_prefill_steps > 0
    assert eng.block_manager.prefix_hits > 0
    eng.block_manager.check_no_leaks()


def test_prefix_hit_reuses_blocks_and_recomputes_last_token(make_engine, hf_model):
    eng = make_engine(block_size=4, num_blocks=64, max_num_batched_tokens=64)
    prompt = list(range(10, 26))          # 16 tokens = exactly 4 full blocks
    first = eng.generate([prompt], SamplingParams(max_tokens=5, **GREEDY))[0]
    second = eng.generate([prompt], SamplingParams(max_tokens=5, **GREEDY))[0]
    assert first["token_ids"] == second["token_ids"] == hf_greedy(hf_model, prompt, 5)
    assert first["num_cached_tokens"] == 0
    # 4 full blocks are cached but the last prompt token is always recomputed: 3 blocks hit
    assert second["num_cached_tokens"] == 12


def test_tenant_salt_prevents_sharing(make_engine):
    eng = make_engine(block_size=4, num_blocks=64)
    prompt = list(range(30, 60))
    p = SamplingParams(max_tokens=2, **GREEDY)
    eng.add_request(prompt, p, request_id="a1", tenant="alice")
    while eng.has_unfinished():
        eng.step()
    alice_blocks = set(eng.block_manager.hash_to_block.values())
    assert alice_blocks
    eng.add_request(prompt, p, request_id="b1", tenant="bob")
    eng.add_request(prompt, p, request_id="a2", tenant="alice")
    eng.step()
    bob, alice2 = eng.scheduler.running[0], eng.scheduler.running[1]
    assert bob.request_id == "b1" and alice2.request_id == "a2"
    assert bob.num_cached_tokens == 0 and not set(bob.block_table) & alice_blocks
    assert alice2.num_cached_tokens > 0 and set(alice2.block_table) & alice_blocks   # same tenant shares
    assert not set(bob.block_table) & set(alice2.block_table)
    while eng.has_unfinished():
        eng.step()


def test_prompt_too_long_is_refused(make_engine):
    eng = make_engine(max_model_len=32, block_size=4, num_blocks=64)
    with pytest.raises(PromptTooLongError) as ei:
        eng.add_request(list(range(5, 45)), SamplingParams(max_tokens=4))
    assert isinstance(ei.value, EngineRequestError)
    assert "maximum context length is 32" in ei.value.message and ei.value.code == "context_length_exceeded"
    assert not eng.has_unfinished()
    # a prompt that fits is capped at max_model_len while generating
    out = eng.generate([list(range(5, 30))], SamplingParams(max_tokens=100, **GREEDY))[0]
    assert out["finish_reason"] == "length" and len(out["token_ids"]) == 32 - 25


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(max_tokens=0), dict(top_k=-2)])
def test_invalid_params_refused(make_engine, bad):
    eng = make_engine()
    with pytest.raises(EngineRequestError):
        eng.add_request([5, 6, 7], SamplingParams(**bad))


def test_interactive_scheduled_before_batch(make_engine):
    eng = make_engine(max_num_seqs=1, block_size=4, num_blocks=64)
    p = SamplingParams(max_tokens=3, **GREEDY)
    eng.add_request([5, 6, 7, 8], p, request_id="batch", priority=Priority.BATCH)
    eng.add_request([9, 10, 11], p, request_id="inter", priority=Priority.INTERACTIVE)
    order = []
    while eng.has_unfinished():
        order += [o.request_id for o in eng.step() if o.finished]
    assert order == ["inter", "batch"]


def test_preemption_picks_batch_class_first(make_engine):
    eng = make_engine(block_size=4, num_blocks=12, max_num_seqs=3, max_num_batched_tokens=64)
    p = SamplingParams(max_tokens=14, **GREEDY)
    eng.add_request(list(range(5, 15)), p, request_id="batch", priority=Priority.BATCH)
    eng.add_request(list(range(20, 30)), p, request_id="int1")
    eng.add_request(list(range(40, 50)), p, request_id="int2")
    preempted = []
    while eng.has_unfinished():
        before = {s.request_id: s.num_preemptions for s in eng.scheduler.running + eng.scheduler.waiting}
        eng.step()
        for s in eng.scheduler.running + eng.scheduler.waiting:
            if s.num_preemptions > before.get(s.request_id, 0):
                preempted.append(s.request_id)
    assert preempted and preempted[0] == "batch"


def test_abort_frees_blocks(make_engine):
    eng = make_engine(block_size=4, num_blocks=32)
    rid = eng.add_request(list(range(5, 25)), SamplingParams(max_tokens=50, **GREEDY))
    eng.add_request(list(range(30, 35)), SamplingParams(max_tokens=50, **GREEDY), request_id="other")
    for _ in range(3):
        eng.step()
    assert eng.block_manager.num_free_blocks < 32
    assert eng.abort(rid) and eng.abort("other")
    assert not eng.has_unfinished()
    eng.block_manager.check_no_leaks()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral"])
def test_other_architectures_match_generate(arch, tmp_path, tiny_model_dir, make_engine):
    """Qwen2 (qkv bias), Qwen3 (q/k norm), Mistral configs load unchanged and match generate."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cls = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
           "mistral": transformers.MistralConfig}[arch]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              initializer_range=0.2, tie_word_embeddings=False)
    if arch == "qwen3":
        kw["head_dim"] = 32
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cls(**kw))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    prompts = [list(range(7, 7 + n)) for n in (3, 17, 9)]
    expected = [hf_greedy(ref, p, 8) for p in prompts]
    eng = make_engine(tmp_path, block_size=4, num_blocks=32, max_num_batched_tokens=8)
    got = [o["token_ids"] for o in eng.generate(prompts, SamplingParams(max_tokens=8, **GREEDY))]
    assert got == expected


def test_warmup_forward_runs_with_scratch_cache(make_engine):
    """The forward used to size the KV pool on CUDA runs (here on CPU) without touching the real pool."""
    eng = make_engine(block_size=4, num_blocks=16)
    before = [k.clone() for k in eng.runner.kv.k]
    eng.runner.warmup(37)
    assert all(torch.equal(a, b) for a, b in zip(before, eng.runner.kv.k))
