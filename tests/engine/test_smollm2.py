"""The engine on the model the embedded default serves (SmolLM2-135M-Instruct), against
transformers itself: the chat template applied exactly as `apply_chat_template`, greedy output
token for token equal to `generate` (its own stop tokens honoured) for a batch of chats sharing
prefixes, plain and streamed, stop strings, characters split across tokens, n > 1 and logprobs.
Lean on purpose (a few prompts, short greedy answers): the tiny random models cover the rest."""
from __future__ import annotations

import asyncio
import json

import pytest
import torch

from selfhost_engine import openai_api as oa
from selfhost_engine.async_engine import AsyncEngine
from selfhost_engine.sequence import SamplingParams
from tests.bundled_model import smollm2_dir

MAX_NEW = 24
SYSTEM = {"role": "system", "content": "You are a concise assistant. Answer in one short sentence, "
                                       "without any preamble, and never ask a question back."}
CHATS = [
    [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
    [SYSTEM, {"role": "user", "content": "Name three planets of the solar system."}],
    [SYSTEM, {"role": "user", "content": "Translate to Japanese: I like green tea."}],
    [SYSTEM, {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."},
     {"role": "user", "content": "And the capital of Italy?"}],
    # no system message: the template adds the model's own
    [{"role": "user", "content": "Write the word 'coffee' in Japanese, in Chinese and as an emoji."}],
]
MULTIBYTE = (2, 4)  # the answers in Japanese / Chinese / emoji


@pytest.fixture(scope="module")
def model_dir():
    return smollm2_dir()


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False) for c in CHATS]


@pytest.fixture(scope="module")
def reference(hf, prompts):
    """transformers' greedy answer per chat, stopping at the model's own stop tokens (EOS included)."""
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=MAX_NEW, do_sample=False)
            out.append(ids[0, len(p):].tolist())
    return out


@pytest.fixture(scope="module")
def aengine(model_dir):
    eng = AsyncEngine.from_model_dir(model_dir, block_size=16, num_blocks=256, max_num_seqs=16, max_model_len=2048,
                                     dtype="float32", device="cpu", served_model_name="smollm2-135m-instruct")
    yield eng
    eng.shutdown()


@pytest.fixture(autouse=True)
def _no_leaks(aengine):
    yield
    assert aengine.wait_idle(30)
    aengine.engine.block_manager.check_no_leaks()


def _text(tok, ids: list[int]) -> str:
    """What a client is shown: special tokens dropped; an incomplete last character is withheld."""
    return tok.decode(ids, skip_special_tokens=True).rstrip("\ufffd")


async def _ids(aengine, prompt: list[int], params: SamplingParams):
    last = None
    async for o in aengine.generate(prompt, params):
        last = o
    return last.seq.output_token_ids, last.finish_reason, last.num_cached_tokens


def test_the_model_is_the_real_one(model_dir, tok, aengine):
    assert aengine.engine.config.max_model_len == 2048 and aengine.engine.runner.model.config.max_position_embeddings == 8192
    assert aengine.engine.eos_token_ids == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    assert (model_dir / "BUNDLED_MODEL.json").exists() and (model_dir / "model.safetensors").exists()


def test_chat_prompt_is_exactly_apply_chat_template(aengine, tok, prompts):
    for chat, want in zip(CHATS, prompts):
        assert oa._chat_prompt(aengine, {"messages": chat}) == want
    # a developer message is the system message; text parts are joined as one content string
    parts = [{"role": "developer", "content": SYSTEM["content"]},
             {"role": "user", "content": [{"type": "text", "text": "What is the capital "},
                                          {"type": "text", "text": "of France?"}]}]
    assert oa._chat_prompt(aengine, {"messages": parts}) == prompts[0]
    assert oa.prompt_token_count(aengine, {"messages": CHATS[4]}) == len(prompts[4])
    assert tok.decode(prompts[4]).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


async def test_batch_of_chats_matches_generate_token_for_token(aengine, tok, prompts, reference):
    """The first chat runs alone for a step, so the others find its system-prompt blocks cached;
    the fourth continues the first's conversation and shares its whole first turn."""
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0)
    steps = aengine.engine.stats.num_steps
    first = asyncio.create_task(_ids(aengine, prompts[0], params))
    for _ in range(3000):  # its prompt is computed (and its full blocks published) after one step
        if aengine.engine.stats.num_steps > steps:
            break
        await asyncio.sleep(0.01)
    rest = await asyncio.gather(*(_ids(aengine, p, params) for p in prompts[1:]))
    got = [await first, *rest]
    for i, ((ids, reason, cached), want) in enumerate(zip(got, reference)):
        assert ids == want, f"chat {i}: {tok.decode(ids)!r} != {tok.decode(want)!r}"
        assert reason == ("stop" if want[-1] in aengine.engine.eos_token_ids else "length")
    assert all(cached > 0 for _, _, cached in got[1:4]), "the shared system prompt is served from the prefix cache"
    assert got[3][2] >= 16 * (len(prompts[0]) // 16)  # the whole first turn (full blocks) is shared
    assert sum(reason == "stop" for _, reason, _ in got) >= 2, "the model's own stop tokens end answers"


async def test_streamed_and_plain_chats_match_generate_across_split_characters(aengine, tok, reference):
    """Streamed text arrives in deltas that never hold half a character, even where one character
    spans several tokens, and adds up to the plain answer and to transformers' decoded text."""
    for i in MULTIBYTE:  # the mechanism under test really runs: single tokens that are not text
        assert any("\ufffd" in tok.decode([t]) for t in reference[i]), "no character split across tokens"

    async def stream(chat):
        body = {"messages": chat, "max_tokens": MAX_NEW, "temperature": 0, "stream": True}
        return [json.loads(b) async for b in oa.chat_completion_stream(aengine, body)]

    plain_calls = [oa.chat_completion(aengine, {"messages": c, "max_tokens": MAX_NEW, "temperature": 0}) for c in CHATS]
    results = await asyncio.gather(*(stream(c) for c in CHATS), *plain_calls)
    streams, plains = results[:len(CHATS)], results[len(CHATS):]
    for i, (chunks, plain, want) in enumerate(zip(streams, plains, reference)):
        deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
        assert not any("\ufffd" in d for d in deltas), f"chat {i}: a delta holds half a character"
        assert "".join(deltas) == plain["choices"][0]["message"]["content"] == _text(tok, want), f"chat {i}"
        assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]


async def test_stop_strings_plain_and_streamed(aengine, tok, reference):
    """A stop string ends the answer before it (it is not shown), also one made of multi-byte characters."""
    cases = []
    for i in (0, 1, 4):
        text = _text(tok, reference[i])
        if i == 4:  # the first non-ASCII character of the answer
            stop = next(ch for ch in text if ord(ch) > 0x2FF)
        else:  # a word in the middle of the answer
            stop = text.split()[len(text.split()) // 2]
        cases.append((CHATS[i], stop, text[:text.find(stop)]))

    async def run(chat, stop):
        body = {"messages": chat, "max_tokens": MAX_NEW, "temperature": 0, "stop": [stop, "never appears"]}
        plain = await oa.chat_completion(aengine, body)
        chunks = [json.loads(b) async for b in oa.chat_completion_stream(aengine, {**body, "stream": True})]
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        return plain["choices"][0], streamed, chunks[-1]["choices"][0]["finish_reason"]

    for (chat, stop, want), (plain, streamed, streamed_reason) in zip(
            cases, await asyncio.gather(*(run(c, s) for c, s, _ in cases))):
        assert plain["message"]["content"] == streamed == want, stop
        assert plain["finish_reason"] == streamed_reason == "stop"


async def test_n_choices_and_logprobs_on_the_real_model(aengine, hf, tok, prompts, reference):
    """n greedy choices are all transformers' answer; logprobs are its log_softmax, and the top
    alternatives its most likely tokens, in order."""
    body = {"messages": CHATS[1], "max_tokens": 8, "temperature": 0, "n": 3, "logprobs": True, "top_logprobs": 3}
    r = await oa.chat_completion(aengine, body)
    want_ids = reference[1][:8]
    assert [c["message"]["content"] for c in r["choices"]] == [_text(tok, want_ids)] * 3
    with torch.inference_mode():
        logits = hf(torch.tensor([prompts[1] + want_ids])).logits[0, len(prompts[1]) - 1:-1]
    hf_lp = torch.log_softmax(logits.float(), dim=-1)
    for choice in r["choices"]:
        content = choice["logprobs"]["content"]
        assert [e["token"] for e in content] == [tok.decode([t]) for t in want_ids]
        for step, (entry, t) in enumerate(zip(content, want_ids)):
            assert entry["logprob"] == pytest.approx(hf_lp[step, t].item(), abs=2e-3)
            top = hf_lp[step].topk(3)
            assert [e["token"] for e in entry["top_logprobs"]] == [tok.decode([i]) for i in top.indices.tolist()]
            assert [e["logprob"] for e in entry["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=2e-3)
    assert r["usage"]["completion_tokens"] == 3 * 8
    # sampled choices with a seed: reproducible, each its own stream
    sampled = {"messages": CHATS[1], "max_tokens": 8, "temperature": 1.0, "seed": 7, "n": 2}
    a, b = await asyncio.gather(oa.chat_completion(aengine, sampled), oa.chat_completion(aengine, sampled))
    assert [c["message"]["content"] for c in a["choices"]] == [c["message"]["content"] for c in b["choices"]]
