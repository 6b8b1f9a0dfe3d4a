"""N-gram speculative decoding on vs off: same requests, same engine settings, side by side.

Two workloads, greedy, EOS ignored, outputs checked identical on vs off:
  copy-heavy  prompts that contain most of the expected output (a passage, then the passage's
              opening again: the continuation is the passage). Random weights do not copy, so this
              workload runs a "copying" variant of the model: the same weights with every attention
              output projection zeroed, whose next token depends on the current one only; a passage
              in the prompt therefore predicts the continuation, as with a real model quoting its
              input. The attention is still computed in full.
  random      bench/engine_throughput.py's random workload on the unmodified random model: drafts
              rarely match, so this measures what speculation costs when it does not pay.
Requests run one at a time (batch 1) by default; off and on alternate request by request, so
machine noise hits both alike. Prints one JSON document and a one-line summary.

    python bench/engine_speculative.py              # 8 requests per workload, K=5
    python bench/engine_speculative.py --quick      # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.engine_throughput import BENCH_SIZE, random_workload  # noqa: E402


class TimedProposer:
    """Wraps the engine's proposer to report the time drafting costs (the rest of a step is the same work)."""

    def __init__(self, inner):
        self.inner = inner
        self.max_k = inner.max_k
        self.seconds = 0.0

    def propose(self, seq, limit):
        t = time.perf_counter()
        try:
            return self.inner.propose(seq, limit)
        finally:
            self.seconds += time.perf_counter() - t


def copying_model(model_dir):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    return m


def engines(model_dir, model, args):
    from transformers import AutoTokenizer

    from selfhost_engine.config import EngineConfig
    from selfhost_engine.engine import LLMEngine
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = {}
    for key, k in (("off", 0), ("on", args.k)):
        cfg = EngineConfig(model=str(model_dir), block_size=16, num_blocks=args.num_blocks, max_num_seqs=args.batch,
                           max_num_batched_tokens=512, dtype="float32", device="cpu", max_model_len=2048,
                           speculative_ngram=k)
        out[key] = LLMEngine(cfg, model=model, tokenizer=tok)
        out[key].scheduler.proposer = TimedProposer(out[key].scheduler.proposer)
    return out


def copy_workload(eng, n, head_len, passage_len, vocab, seed):
    """(prompt, output_len) pairs whose prompt holds the expected output: filler + head + passage + head."""
    from selfhost_engine.sequence import SamplingParams
    r = random.Random(seed)
    reqs = []
    for _ in range(n):
        filler = [r.randrange(10, vocab) for _ in range(r.randint(16, 64))]
        head = [r.randrange(10, vocab) for _ in range(head_len)]
        passage = eng.generate([head], SamplingParams(temperature=0, max_tokens=passage_len, ignore_eos=True,
                                                     detokenize=False))[0]["token_ids"]
        reqs.append((filler + head + passage + head, passage_len))
    return reqs


def run(engs, reqs, batch):
    """Alternate off/on over the same batches; returns per-mode totals and the outputs."""
    from selfhost_engine.sequence import SamplingParams
    res = {m: {"seconds": 0.0, "cpu": 0.0, "tokens": 0, "outputs": []} for m in engs}
    prop0 = {m: e.scheduler.proposer.seconds for m, e in engs.items()}
    base = {m: (e.stats.num_steps, e.stats.spec_draft_tokens, e.stats.spec_accepted_tokens, e.stats.spec_drafts)
            for m, e in engs.items()}
    for i in range(0, len(reqs), batch):
        chunk = reqs[i:i + batch]
        for mode, eng in engs.items():
            params = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True, detokenize=False) for _, o in chunk]
            t0, c0 = time.perf_counter(), time.process_time()
            outs = eng.generate([p for p, _ in chunk], params)
            res[mode]["seconds"] += time.perf_counter() - t0
            res[mode]["cpu"] += time.process_time() - c0
            res[mode]["tokens"] += sum(len(o["token_ids"]) for o in outs)
            res[mode]["outputs"] += [o["token_ids"] for o in outs]
    summary = {}
    for mode, eng in engs.items():
        st = eng.stats
        steps, drafted, accepted, drafts = (a - b for a, b in zip(
            (st.num_steps, st.spec_draft_tokens, st.spec_accepted_tokens, st.spec_drafts), base[mode]))
        r = res[mode]
        summary[mode] = {"output_tokens": r["tokens"], "seconds": round(r["seconds"], 3),
                         "output_tok_per_s": round(r["tokens"] / r["seconds"], 2), "cpu_seconds": round(r["cpu"], 3),
                         "output_tok_per_cpu_s": round(r["tokens"] / r["cpu"], 2), "steps": steps,
                         "drafting_seconds": round(eng.scheduler.proposer.seconds - prop0[mode], 4),
                         "drafted_tokens": drafted, "accepted_tokens": accepted,
                         "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
                         "accepted_per_draft_step": round(accepted / drafts, 3) if drafts else None}
        eng.block_manager.check_no_leaks()
    summary["identical_outputs"] = res["off"]["outputs"] == res["on"]["outputs"]
    summary["speedup"] = round(summary["on"]["output_tok_per_s"] / summary["off"]["output_tok_per_s"], 3)
    summary["speedup_cpu"] = round(summary["on"]["output_tok_per_cpu_s"] / summary["off"]["output_tok_per_cpu_s"], 3)
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 requests, short outputs")
    ap.add_argument("--model-dir", default=None, help="model (default: the ~55M random Llama of engine_throughput)")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/selfhost_engine"))
    ap.add_argument("--k", type=int, default=5, help="--speculative-ngram K")
    ap.add_argument("--num-requests", type=int, default=8)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1, help="requests run together (1 = one at a time)")
    ap.add_argument("--num-blocks", type=int, default=600)
    ap.add_argument("--workloads", default="copy,random")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine a second thread mostly spin-waits)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.num_requests, args.output_len = 3, 32
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import AutoModelForCausalLM

    from selfhost_engine.tiny_model import ensure_tiny_model
    transformers.logging.set_verbosity_error()
    model_dir = Path(args.model_dir) if args.model_dir else ensure_tiny_model(
        args.cache_dir, name="bench-llama-55m", max_position_embeddings=4096, **BENCH_SIZE)
    report = {"model": str(model_dir), "k": args.k, "batch": args.batch, "torch_threads": args.threads,
              "workloads": {}}
    for wl in args.workloads.split(","):
        if wl == "copy":
            engs = engines(model_dir, copying_model(model_dir), args)
            vocab = engs["off"].runner.vocab_size
            reqs = copy_workload(engs["off"], args.num_requests, 8, args.output_len, vocab, args.seed)
        elif wl == "random":
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
            engs = engines(model_dir, model, args)
            vocab = engs["off"].runner.vocab_size
            reqs = random_workload(args.num_requests, (32, 256), (args.output_len, args.output_len), vocab, args.seed)
        else:
            raise SystemExit(f"unknown workload {wl}")
        warm = [(list(range(10, 40)), 4)]
        run(engs, warm, 1)
        res = run(engs, reqs, args.batch)
        res["requests"] = len(reqs)
        res["prompt_tokens"] = sum(len(p) for p, _ in reqs)
        report["workloads"][wl] = res
        print(f"# {wl}: {json.dumps(res)}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    parts = [f"{wl}: off {r['off']['output_tok_per_s']} tok/s, on {r['on']['output_tok_per_s']} tok/s "
             f"({r['speedup']}x wall, {r['speedup_cpu']}x per CPU-s, acceptance {r['on']['acceptance_rate']}, "
             f"identical {r['identical_outputs']})"
             for wl, r in report["workloads"].items()]
    print(f"speculative ngram K={args.k} batch {args.batch}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
