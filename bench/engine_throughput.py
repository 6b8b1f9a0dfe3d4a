"""Throughput benchmark: selfhost_engine vs transformers static batching vs transformers continuous batching.

Same model, same requests, same output lengths (EOS ignored), one process, side by side.
Prints one JSON document and a one-line summary.

    python bench/engine_throughput.py                   # full run (64 requests per workload), ~55M random Llama
    python bench/engine_throughput.py --model smollm2   # the embedded default's real model (SmolLM2-135M-Instruct)
    python bench/engine_throughput.py --quick           # small smoke run

ShareGPT prompts come from `gateway.routing.sharegpt` (allowed conversations only: a quarter of
the data set is reserved for independent evaluation and never read). With `--model smollm2` they
are sent as chats (the model's chat template), as the gateway sends them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

BENCH_SIZE = dict(hidden=512, layers=16, heads=8, kv_heads=4, intermediate=1536)  # ~55M parameters


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


_CPU0 = [0.0]


def cpu_mark() -> None:
    _CPU0[0] = time.process_time()


def summarize(name, reqs, t_total, ttft, tpot, extra=None) -> dict:
    useful = sum(o for _, o in reqs)
    cpu = time.process_time() - _CPU0[0]   # all threads of this process: robust to other load on the machine
    d = {"system": name, "requests": len(reqs), "useful_output_tokens": useful, "seconds": round(t_total, 3),
         "cpu_seconds": round(cpu, 3), "output_tok_per_cpu_s": round(useful / cpu, 2),
         "output_tok_per_s": round(useful / t_total, 2), "req_per_s": round(len(reqs) / t_total, 3),
         "ttft_p50_s": round(pct(ttft, 50), 4), "ttft_p99_s": round(pct(ttft, 99), 4),
         "tpot_p50_ms": round(1000 * pct(tpot, 50), 2), "tpot_p99_ms": round(1000 * pct(tpot, 99), 2)}
    d.update(extra or {})
    return d


# ---- workloads ------------------------------------------------------------------------------------
def random_workload(n, in_range, out_range, vocab, seed):
    """nano-vllm's random workload: uniform input/output lengths, random token ids, ignore_eos."""
    r = random.Random(seed)
    return [([r.randrange(10, vocab) for _ in range(r.randint(*in_range))], r.randint(*out_range)) for _ in range(n)]


def sharegpt_workload(tok, n, max_in, max_out, seed, chat=False, min_in=4, min_out=4):
    """vLLM's recipe: first human turn as the prompt, the first reply's token count as the output length;
    lengths capped to fit the model. `chat`: the (capped) user turn wrapped in the chat template."""
    from gateway.routing.sharegpt import iter_records

    recs = list(iter_records(limit=4000))  # allowed conversations only
    pairs = []
    for rec in recs:
        conv = rec.get("conversations") or []
        if len(conv) >= 2 and conv[0].get("from") == "human" and conv[1].get("from") == "gpt":
            pairs.append((conv[0]["value"], conv[1]["value"]))
    r = random.Random(seed)
    r.shuffle(pairs)
    out = []
    for p, c in pairs:
        pi = tok.encode(p, add_special_tokens=False)[:max_in]
        if chat:
            pi = tok.apply_chat_template([{"role": "user", "content": tok.decode(pi)}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)
        ol = min(len(tok.encode(c, add_special_tokens=False)), max_out)
        if len(pi) >= min_in and ol >= min_out:
            out.append((pi, ol))
        if len(out) == n:
            break
    return out, len(recs)


# ---- systems --------------------------------------------------------------------------------------
def run_ours(model_dir, reqs, args):
    from selfhost_engine.config import EngineConfig
    from selfhost_engine.engine import LLMEngine
    from selfhost_engine.sequence import SamplingParams

    eng = LLMEngine(EngineConfig(model=str(model_dir), block_size=args.block_size, max_num_seqs=args.batch_size,
                                 max_num_batched_tokens=args.max_batched_tokens, dtype="float32", device="cpu",
                                 max_model_len=2048, num_blocks=args.num_blocks))
    eng.generate([list(range(10, 60))] * 2, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    eng.stats.kv_stored_token_steps = eng.stats.kv_allocated_slot_steps = 0
    pre0 = eng.scheduler.num_preemptions
    cpu_mark()
    t0 = time.monotonic()
    seqs = []
    for p, o in reqs:
        rid = eng.add_request(p, SamplingParams(temperature=0, max_tokens=o, ignore_eos=True, detokenize=False),
                              arrival_time=t0)
        seqs.append(eng.seqs[rid])
    while eng.has_unfinished():
        eng.step()
    t = time.monotonic() - t0
    assert all(s.num_output_tokens == o for s, (_, o) in zip(seqs, reqs))
    ttft = [s.first_token_time - t0 for s in seqs]
    tpot = [(s.last_token_time - s.first_token_time) / (s.num_output_tokens - 1) for s in seqs if s.num_output_tokens > 1]
    eng.block_manager.check_no_leaks()
    return summarize("selfhost_engine", reqs, t, ttft, tpot, {
        "kv_waste": round(eng.stats.kv_waste, 4), "preemptions": eng.scheduler.num_preemptions - pre0,
        "num_blocks": eng.config.num_blocks, "block_size": eng.config.block_size,
        "max_num_seqs": args.batch_size, "max_num_batched_tokens": args.max_batched_tokens})


def load_hf(model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()


class _StepClock:
    """A logits processor that records when each decoding step's logits are ready."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.monotonic())
        return scores


def run_static(model, reqs, args, pad_id):
    from transformers import LogitsProcessorList

    cpu_mark()
    t0 = time.monotonic()
    ttft, tpot, generated = [], [], 0
    with torch.inference_mode():
        for b in range(0, len(reqs), args.batch_size):
            batch = reqs[b:b + args.batch_size]
            L = max(len(p) for p, _ in batch)
            ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), L), dtype=torch.long)
            for i, (p, _) in enumerate(batch):           # left padding
                ids[i, L - len(p):] = torch.tensor(p)
                mask[i, L - len(p):] = 1
            mx = max(o for _, o in batch)
            clock = _StepClock()
            out = model.generate(ids, attention_mask=mask, max_new_tokens=mx, min_new_tokens=mx, do_sample=False,
                                 eos_token_id=None, pad_token_id=pad_id, logits_processor=LogitsProcessorList([clock]))
            generated += (out.shape[1] - L) * len(batch)
            for _, o in batch:   # request i is done once its own o tokens exist
                ttft.append(clock.times[0] - t0)
                if o > 1:
                    tpot.append((clock.times[o - 1] - clock.times[0]) / (o - 1))
    t = time.monotonic() - t0
    return summarize(f"transformers_static_batch{args.batch_size}", reqs, t, ttft, tpot,
                     {"raw_generated_tokens": generated, "raw_tok_per_s": round(generated / t, 2)})


def run_hf_cb(model, reqs, args):
    """transformers' continuous batching (the manager behind `generate_batch`, paged cache), with each
    request's own max_new_tokens and no EOS."""
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    gc = GenerationConfig(max_new_tokens=max(o for _, o in reqs), do_sample=False, eos_token_id=None)
    hints = WorkloadHints(max_prompt_length=max(len(p) for p, _ in reqs),
                          max_generated_length=max(o for _, o in reqs), num_requests=len(reqs))
    with model.continuous_batching_context_manager(generation_config=gc, block=True, timeout=5,
                                                   workload_hints=hints) as m:
        cpu_mark()
        t0 = time.monotonic()
        tp0 = time.perf_counter()
        ids = [m.add_request(p, request_id=f"r{i}", max_new_tokens=o, eos_token_id=-1, record_timestamps=True)
               for i, (p, o) in enumerate(reqs)]
        results = {}
        while len(results) < len(ids):
            r = m.get_result(timeout=1)
            if r is not None and r.is_finished():
                results[r.request_id] = r
            elif r is None and not m.is_running():
                raise RuntimeError("transformers continuous batching stopped")
        t = time.monotonic() - t0
    ttft, tpot = [], []
    for i, (_, o) in enumerate(reqs):
        r = results[f"r{i}"]
        assert len(r.generated_tokens) == o, (len(r.generated_tokens), o)
        ts = r.timestamps or []
        if ts:
            ttft.append(ts[0] - tp0)
            if len(ts) > 1:
                tpot.append((ts[-1] - ts[0]) / (len(ts) - 1))
    return summarize("transformers_continuous_batching", reqs, t, ttft, tpot)


def prefix_bench(model_dir, args, vocab):
    """TTFT of a request whose 1,000-token system prompt is in the prefix cache vs one whose is not."""
    from selfhost_engine.config import EngineConfig
    from selfhost_engine.engine import LLMEngine
    from selfhost_engine.sequence import SamplingParams

    eng = LLMEngine(EngineConfig(model=str(model_dir), block_size=args.block_size, max_num_seqs=args.batch_size,
                                 max_num_batched_tokens=2048, dtype="float32", device="cpu", max_model_len=2048))
    r = random.Random(7)
    sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)

    def ttft(prompt):
        t0 = time.monotonic()
        rid = eng.add_request(prompt, sp, arrival_time=t0)
        s = eng.seqs[rid]
        while eng.has_unfinished():
            eng.step()
        return s.first_token_time - t0, s.num_cached_tokens

    eng.generate([[10 + i % 500 for i in range(1030)]], sp)  # warm-up
    miss, hit = [], []
    for _ in range(args.prefix_trials):
        system = [r.randrange(10, vocab) for _ in range(1000)]
        m, c0 = ttft(system + [r.randrange(10, vocab) for _ in range(24)])
        h, c1 = ttft(system + [r.randrange(10, vocab) for _ in range(24)])
        assert c0 == 0 and c1 >= 1000 - args.block_size
        miss.append(m)
        hit.append(h)
    mm, hm = statistics.median(miss), statistics.median(hit)
    return {"system_prompt_tokens": 1000, "user_tokens": 24, "trials": args.prefix_trials,
            "ttft_miss_ms": round(1000 * mm, 2), "ttft_hit_ms": round(1000 * hm, 2), "speedup": round(mm / hm, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small smoke run (12 requests, short lengths)")
    ap.add_argument("--model", choices=["bench-55m", "smollm2"], default="bench-55m",
                    help="bench-55m: a ~55M random Llama built once; smollm2: SmolLM2-135M-Instruct, the embedded "
                         "default's model (fetched and converted once into the gateway's cache folder)")
    ap.add_argument("--model-dir", default=None, help="any model directory (overrides --model)")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/selfhost_engine"))
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--input-len", type=int, nargs=2, default=[32, 256])
    ap.add_argument("--output-len", type=int, nargs=2, default=[16, 256])
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--num-blocks", type=int, default=1100, help="KV pool (1100 x 16 slots fits 32 x 512 tokens)")
    ap.add_argument("--max-batched-tokens", type=int, default=512)
    ap.add_argument("--workloads", default="random,sharegpt")
    ap.add_argument("--systems", default="ours,static,hf_cb")
    ap.add_argument("--prefix-trials", type=int, default=5)
    ap.add_argument("--no-prefix", action="store_true")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.num_requests, args.input_len, args.output_len, args.prefix_trials = 12, [16, 64], [8, 32], 2
        args.batch_size = min(args.batch_size, 8)
    torch.set_num_threads(args.threads)

    import transformers
    from transformers import AutoTokenizer

    from selfhost_engine.tiny_model import ensure_tiny_model
    transformers.logging.set_verbosity_error()
    if args.model_dir:
        model_dir = Path(args.model_dir)
    elif args.model == "smollm2":
        from gateway.settings import default_cache_dir
        from selfhost_engine import smollm2

        model_dir = smollm2.ensure(Path(default_cache_dir()) / "models", progress=lambda m: print(m, file=sys.stderr))
    else:
        model_dir = ensure_tiny_model(args.cache_dir, name="bench-llama-55m", max_position_embeddings=4096,
                                      **BENCH_SIZE)
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = load_hf(model_dir)
    vocab = hf.config.vocab_size
    n_params = sum(p.numel() for p in hf.parameters())
    systems = args.systems.split(",")
    c = hf.config
    report = {"model": {"name": args.model if not args.model_dir else model_dir.name, "dir": str(model_dir),
                        "parameters": n_params, "hidden": c.hidden_size, "layers": c.num_hidden_layers,
                        "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads,
                        "intermediate": c.intermediate_size, "vocab": vocab},
              "torch_threads": args.threads, "batch_size": args.batch_size,
              "load_average_at_start": list(os.getloadavg()), "workloads": {}}
    for wl in args.workloads.split(","):
        if wl == "random":
            reqs = random_workload(args.num_requests, args.input_len, args.output_len, vocab, args.seed)
            meta = {"input_len": args.input_len, "output_len": args.output_len}
        elif wl == "sharegpt":
            chat = args.model == "smollm2" and not args.model_dir
            reqs, nrec = sharegpt_workload(tok, args.num_requests, args.input_len[1], args.output_len[1], args.seed,
                                           chat=chat)
            meta = {"allowed_records_read": nrec, "max_input": args.input_len[1], "max_output": args.output_len[1],
                    "chat_template": chat}
        else:
            raise SystemExit(f"unknown workload {wl}")
        meta.update(requests=len(reqs), prompt_tokens=sum(len(p) for p, _ in reqs),
                    output_tokens=sum(o for _, o in reqs))
        res = {"workload": meta}
        for key, fn in (("ours", lambda: run_ours(model_dir, reqs, args)),
                        ("static", lambda: run_static(hf, reqs, args, tok.pad_token_id or 0)),
                        ("hf_cb", lambda: run_hf_cb(hf, reqs, args))):
            if key in systems:
                res[key] = fn()
                print(f"# {wl} {key}: {json.dumps(res[key])}", file=sys.stderr, flush=True)
        if "ours" in res and "static" in res:
            res["speedup_vs_static"] = round(res["ours"]["output_tok_per_s"] / res["static"]["output_tok_per_s"], 2)
        if "ours" in res and "hf_cb" in res:
            res["speedup_vs_hf_cb"] = round(res["ours"]["output_tok_per_s"] / res["hf_cb"]["output_tok_per_s"], 2)
        report["workloads"][wl] = res
        print(f"# {wl} done", file=sys.stderr, flush=True)
    if not args.no_prefix:
        report["prefix"] = prefix_bench(model_dir, args, vocab)
    report["load_average_at_end"] = list(os.getloadavg())
    print(json.dumps(report, indent=2))
    parts = []
    for wl, res in report["workloads"].items():
        s = f"{wl}: ours {res.get('ours', {}).get('output_tok_per_s', '-')} tok/s"
        if "static" in res:
            s += f", static {res['static']['output_tok_per_s']} ({res['speedup_vs_static']}x)"
        if "hf_cb" in res:
            s += f", hf_cb {res['hf_cb']['output_tok_per_s']} ({res['speedup_vs_hf_cb']}x)"
        if "ours" in res:
            s += f", kv_waste {res['ours']['kv_waste']:.3f}, preempt {res['ours']['preemptions']}"
        parts.append(s)
    if "prefix" in report:
        p = report["prefix"]
        parts.append(f"prefix TTFT hit {p['ttft_hit_ms']}ms vs miss {p['ttft_miss_ms']}ms ({p['speedup']}x)")
    print("SUMMARY " + " | ".join(parts))


if __name__ == "__main__":
    main()
