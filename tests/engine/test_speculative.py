"""N-gram speculative decoding: greedy output equals `generate` token for token with drafts
verified through the paged attention and rejected drafts rolled back; the acceptance rule keeps
the sampling distribution; vLLM-named metrics."""
from __future__ import annotations

import random

import pytest
import torch
from prometheus_client import generate_latest
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfhost_engine.async_engine import AsyncEngine
from selfhost_engine.config import EngineConfig
from selfhost_engine.engine import LLMEngine
from selfhost_engine.metrics import EngineMetrics
from selfhost_engine.sampler import Sampler
from selfhost_engine.sequence import SamplingParams, Sequence
from selfhost_engine.speculative import NgramProposer

from .conftest import hf_greedy

GREEDY = dict(temperature=0.0, ignore_eos=True, detokenize=False)


class OracleDrafts:
    """Drafts the reference continuation with every third drafted token corrupted, so each step
    both accepts and rejects: exercises verification and KV rollback with attention that matters."""

    def __init__(self, max_k: int, expected: dict[tuple, list[int]]):
        self.max_k = max_k
        self.expected = expected

    def propose(self, seq: Sequence, limit: int) -> list[int]:
        ref = self.expected[tuple(seq.prompt_token_ids)]
        done = seq.num_output_tokens
        d = ref[done:done + min(self.max_k, limit)]
        return [t if (done + j) % 3 else (t + 1) % 500 + 4 for j, t in enumerate(d)]


def test_ngram_proposer_drafts_what_followed_the_earliest_match():
    p = NgramProposer(4, max_n=3, min_n=2)
    seq = Sequence("r", [5, 6, 7, 8, 9, 1, 2, 5, 6], SamplingParams())
    assert p.propose(seq, 10) == [7, 8, 9, 1]
    assert p.propose(seq, 2) == [7, 8]
    assert p.propose(Sequence("r", [5, 6, 7, 5], SamplingParams()), 4) == []   # 1-gram matches are ignored


def test_greedy_equals_generate_with_drafts_chunking_preemption_and_prefix_hits(make_engine, hf_model):
    vocab = hf_model.config.vocab_size
    r = random.Random(3)
    shared = [r.randrange(4, vocab) for _ in range(9)]
    prompts = [[r.randrange(4, vocab) for _ in range(n)] for n in (5, 30, 17, 2)]
    prompts += [shared + [r.randrange(4, vocab) for _ in range(n)] for n in (3, 8)]
    max_new = [20, 14, 24, 9, 16, 18]
    expected = [hf_greedy(hf_model, p, n) for p, n in zip(prompts, max_new)]
    eng = make_engine(block_size=4, num_blocks=18, max_num_batched_tokens=12, max_num_seqs=5, speculative_ngram=4)
    eng.scheduler.proposer = OracleDrafts(4, {tuple(p): e for p, e in zip(prompts, expected)})
    got = {}
    rids = [eng.add_request(p, SamplingParams(max_tokens=n, **GREEDY)) for p, n in zip(prompts[:4], max_new)]
    steps = 0
    while eng.has_unfinished():
        if steps == 6:
            rids += [eng.add_request(p, SamplingParams(max_tokens=n, **GREEDY))
                     for p, n in zip(prompts[4:], max_new[4:])]
        for o in eng.step():
            if o.finished:
                got[o.request_id] = o.seq.output_token_ids
        steps += 1
    assert [got[r] for r in rids] == expected
    st = eng.stats
    assert st.spec_accepted_tokens > 0 and st.spec_accepted_tokens < st.spec_draft_tokens
    assert eng.scheduler.num_preemptions > 0 and st.chunked_prefill_steps > 0 and eng.block_manager.prefix_hits > 0
    assert steps < sum(max_new)   # several tokens per step


@pytest.fixture(scope="module")
def copy_model(tiny_model_dir):
    """The tiny model with every attention output projection zeroed: the next token is a function of
    the current one, so a prompt holding a passage predicts its continuation (a stand-in for a model
    that copies). Two copies: one for the engine, one as transformers' reference."""
    def load():
        m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            for layer in m.model.layers:
                layer.self_attn.o_proj.weight.zero_()
        return m
    return load(), load()


def test_ngram_speculation_accepts_on_a_copy_heavy_prompt_and_matches_generate(tiny_model_dir, copy_model):
    engine_model, ref = copy_model
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eng = LLMEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", device="cpu", block_size=4,
                                 num_blocks=200, speculative_ngram=5), model=engine_model, tokenizer=tok)
    r = random.Random(1)
    head = [r.randrange(4, ref.config.vocab_size) for _ in range(6)]
    passage = hf_greedy(ref, head, 40)
    prompt = head + passage + head                     # the continuation is the passage again
    want = hf_greedy(ref, prompt, 40)
    out = eng.generate([prompt], SamplingParams(max_tokens=40, n=2, **GREEDY))[0]
    assert out["token_ids"] == want
    assert eng.stats.spec_accepted_tokens >= 20 and eng.stats.num_steps < 30
    eng.block_manager.check_no_leaks()


def test_acceptance_rule_keeps_the_sampling_distribution():
    """Whatever the draft, the first emitted token is distributed as the sampler's p."""
    probs = torch.tensor([0.45, 0.3, 0.15, 0.06, 0.04])
    logits = probs.log().expand(2, -1)                 # row 0 verifies the draft, row 1 is the bonus row
    s = Sampler(seed=0)
    N = 3000
    for draft in (0, 3):
        seqs = [Sequence(f"r{i}", [1], SamplingParams(temperature=1.0, seed=i)) for i in range(N)]
        out = s.verify(logits.repeat(N, 1), seqs, [[draft]] * N)
        first = torch.tensor([t[0] for t in out])
        freq = torch.bincount(first, minlength=5).float() / N
        assert torch.allclose(freq, probs, atol=0.03), (draft, freq)
        kept = sum(len(t) == 2 for t in out) / N
        assert abs(kept - probs[draft].item()) < 0.03          # a draft is kept with probability p(draft)


async def test_spec_metrics_and_sampled_requests(tiny_model_dir, copy_model):
    engine_model, _ = copy_model
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = EngineConfig(model=str(tiny_model_dir), dtype="float32", device="cpu", block_size=4, num_blocks=200,
                       speculative_ngram=4)
    eng = LLMEngine(cfg, model=engine_model, tokenizer=tok)
    head = list(range(10, 16))
    prompt = head + eng.generate([head], SamplingParams(max_tokens=30, **GREEDY))[0]["token_ids"] + head
    ae = AsyncEngine(eng, served_model_name="tiny")
    try:
        metrics = EngineMetrics(ae)
        outs = []
        for _ in range(2):
            toks = []
            async for o in ae.generate(prompt, SamplingParams(temperature=0.2, seed=5, max_tokens=24, ignore_eos=True)):
                toks += o.new_token_ids
            outs.append(toks)
        assert outs[0] == outs[1] and len(outs[0]) == 24            # seeded: reproducible with speculation
        text = generate_latest(metrics.registry).decode()
        vals = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln.startswith("vllm:spec")}
        assert vals['vllm:spec_decode_num_draft_tokens_total{model_name="tiny"}'] > 0
        assert vals['vllm:spec_decode_num_accepted_tokens_total{model_name="tiny"}'] > 0
        assert 0 < vals['vllm:spec_decode_draft_acceptance_rate{model_name="tiny"}'] <= 1
        assert 'vllm:spec_decode_num_drafts_total{model_name="tiny"}' in vals
    finally:
        ae.shutdown()


class FixedDrafts:
    max_k = 2

    def propose(self, seq: Sequence, limit: int) -> list[int]:
        return [5, 6][:limit]


def test_no_drafts_while_more_sequences_run_than_the_limit(make_engine):
    eng = make_engine(block_size=4, num_blocks=64, speculative_ngram=2, speculative_disable_by_batch_size=1)
    eng.scheduler.proposer = FixedDrafts()
    eng.generate([list(range(20, 30)), list(range(40, 50))], SamplingParams(max_tokens=4, **GREEDY))
    assert eng.stats.spec_draft_tokens == 0            # two running > limit 1
    eng.generate([list(range(20, 30))], SamplingParams(max_tokens=4, **GREEDY))
    assert eng.stats.spec_draft_tokens > 0
