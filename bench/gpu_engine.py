"""One command for a CUDA machine: selfhost_engine on the embedded default's real model
(SmolLM2-135M-Instruct, fetched and converted once into the gateway's cache folder) and on a
Qwen3-0.6B-shaped random bf16 model.

    python bench/gpu_engine.py                       # CUDA: the full run, both models (a few minutes on one GPU)
    python bench/gpu_engine.py --model smollm2       # CUDA: the real model only
    python bench/gpu_engine.py --device cpu --tiny   # CPU, tiny model: what CI runs to keep this working
    python bench/gpu_engine.py --device cpu --small --model smollm2   # CPU, the real model, small workloads

Reports (one JSON document, then a one-line summary):
  roofline     batch-1 decode tokens/s as a fraction of the HBM roofline: parameter bytes / measured
               copy bandwidth (a device-to-device copy, read + write counted)
  throughput   output tokens/s at C concurrent requests (C = 64, 256; 2C random requests each)
               against transformers' static batching (generate on batches of C, left padded) on the
               same device and model, and the KV pool's waste over that run
  graphs       CUDA graphs on vs off: batch-1 decode and C=64 throughput (CUDA only)
  kv_pool      blocks, tokens and GiB of the KV pool
  prefix       TTFT of a long prompt cold vs with its prefix cached (median of trials)
  chat_check   (SmolLM2) greedy answers to a few chats from the engine and from transformers'
               `generate` on the same device and dtype: the texts and whether the tokens match
Every section runs on its own: a failure is recorded as {"error": ...} and the rest still run.
With several models the JSON holds one report per model under "runs", and one summary line each.
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
TINY = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
FULL = dict(concurrency=[64, 256], in_len=(128, 512), out_len=(64, 256), max_model_len=1024, b1_out=512,
            prefix_len=896, trials=5)
SMALL = dict(concurrency=[2, 4], in_len=(8, 16), out_len=(4, 8), max_model_len=64, b1_out=8,
             prefix_len=40, trials=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(shape: dict, dtype: torch.dtype, device: torch.device, seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen3Config(**shape, max_position_embeddings=40960, rms_norm_eps=1e-6, initializer_range=0.02)
    with torch.device(device):
        return Qwen3ForCausalLM(cfg).to(dtype).eval()


def load_smollm2(dtype: torch.dtype, device: torch.device):
    """The embedded default's model and tokenizer (fetched and converted on first use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gateway.settings import default_cache_dir
    from selfhost_engine import smollm2
    model_dir = smollm2.ensure(Path(default_cache_dir()) / "models", progress=lambda m: print(m, file=sys.stderr))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


CHATS = ["What is the capital of France?", "Name three planets of the solar system.",
         "Write one sentence about the sea.", "Translate to Japanese: I like green tea."]


@torch.inference_mode()
def chat_reference(model, tok, device: torch.device, max_new: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, transformers' greedy answer) per chat, one at a time, stopping at the model's own stop tokens."""
    out = []
    for q in CHATS:
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
        ids = model.generate(torch.tensor([prompt], device=device), attention_mask=torch.ones(1, len(prompt),
                             dtype=torch.long, device=device), max_new_tokens=max_new, do_sample=False)
        out.append((prompt, ids[0, len(prompt):].tolist()))
    return out


def chat_check(eng, tok, reference) -> dict:
    from selfhost_engine.sequence import SamplingParams
    outs = eng.generate([p for p, _ in reference], [SamplingParams(temperature=0, max_tokens=len(want) or 1)
                                                     for _, want in reference])
    eng.block_manager.check_no_leaks()
    rows = [{"engine": o["text"], "transformers": tok.decode(want, skip_special_tokens=True),
             "tokens_equal": o["token_ids"] == want} for o, (_, want) in zip(outs, reference)]
    return {"chats": rows, "all_tokens_equal": all(r["tokens_equal"] for r in rows)}


def copy_bandwidth(device: torch.device, dtype: torch.dtype, nbytes: int) -> float:
    """Bytes/s of a large tensor copy (read + write)."""
    n = nbytes // torch.empty((), dtype=dtype).element_size()
    src, dst = torch.ones(n, dtype=dtype, device=device), torch.empty(n, dtype=dtype, device=device)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * n * torch.empty((), dtype=dtype).element_size() / best


def make_engine(model, tok, a, p, *, name: str, eager: bool, max_num_seqs: int):
    from selfhost_engine.config import EngineConfig
    from selfhost_engine.engine import LLMEngine
    cfg = EngineConfig(model=name, device=a.device, dtype=a.dtype, block_size=16,
                       max_num_seqs=max_num_seqs, max_num_batched_tokens=a.max_batched_tokens,
                       max_model_len=p["max_model_len"], gpu_memory_utilization=a.gpu_memory_utilization,
                       enforce_eager=eager, cuda_graph_max_bs=max_num_seqs, cpu_kv_cache_gb=0.25)
    return LLMEngine(cfg, model=model, tokenizer=tok)


def drop(eng) -> None:
    del eng
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_engine(eng, reqs, concurrency: int) -> dict:
    from selfhost_engine.sequence import SamplingParams
    eng.config.max_num_seqs = concurrency          # the scheduler reads it every step
    st = eng.stats
    st.kv_stored_token_steps = st.kv_allocated_slot_steps = 0
    sync(eng.runner.device)
    t0 = time.perf_counter()
    outs = eng.generate([p for p, _ in reqs], [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True,
                                                              detokenize=False) for _, o in reqs])
    sync(eng.runner.device)
    dt = time.perf_counter() - t0
    tokens = sum(len(o["token_ids"]) for o in outs)
    eng.block_manager.check_no_leaks()
    return {"requests": len(reqs), "output_tokens": tokens, "seconds": round(dt, 3),
            "output_tok_per_s": round(tokens / dt, 1), "kv_waste": round(st.kv_waste, 4)}


def decode_b1(eng, prompt: list[int], out_len: int) -> float:
    from selfhost_engine.sequence import SamplingParams
    rid = eng.add_request(prompt, SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True, detokenize=False))
    seq = eng.seqs[rid]
    while eng.has_unfinished():
        eng.step()
    return (seq.num_output_tokens - 1) / (seq.last_token_time - seq.first_token_time)


@torch.inference_mode()
def run_static(model, reqs, batch: int, device: torch.device) -> dict:
    """transformers' static batching: generate per batch of `batch`, left padded, to the batch's longest output."""
    model.set_attn_implementation("sdpa")
    useful = sum(o for _, o in reqs)
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(reqs), batch):
        chunk = reqs[i:i + batch]
        width = max(len(p) for p, _ in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk], device=device)
        n = max(o for _, o in chunk)
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       eos_token_id=None, pad_token_id=0)
    sync(device)
    dt = time.perf_counter() - t0
    return {"batch": batch, "useful_output_tokens": useful, "seconds": round(dt, 3),
            "output_tok_per_s": round(useful / dt, 1)}


def prefix_ttft(eng, vocab: int, p: dict, rng: random.Random) -> dict:
    from selfhost_engine.sequence import SamplingParams

    def ttft(prompt):
        sync(eng.runner.device)
        t = time.perf_counter()
        eng.add_request(prompt, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False))
        while eng.has_unfinished():
            eng.step()
        sync(eng.runner.device)
        return time.perf_counter() - t
    cold, warm = [], []
    for _ in range(p["trials"]):
        prefix = [rng.randrange(10, vocab) for _ in range(p["prefix_len"])]
        cold.append(ttft(prefix + [rng.randrange(10, vocab) for _ in range(16)]))
        warm.append(ttft(prefix + [rng.randrange(10, vocab) for _ in range(16)]))
    c, w = statistics.median(cold), statistics.median(warm)
    return {"prompt_tokens": p["prefix_len"] + 16, "ttft_cold_ms": round(1000 * c, 2),
            "ttft_prefix_hit_ms": round(1000 * w, 2), "speedup": round(c / w, 2)}


def section(report: dict, name: str, fn) -> None:
    t = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as e:  # keep going: one broken section must not cost the whole GPU run
        report[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
    print(f"# {name} ({time.perf_counter() - t:.1f}s): {json.dumps(report[name])}", file=sys.stderr, flush=True)


MODELS = ("smollm2", "qwen3-0.6b", "tiny")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="smollm2,qwen3-0.6b",
                    help="comma-separated: smollm2 (the embedded default's real model), qwen3-0.6b (random weights "
                         "in Qwen3-0.6B's shape), tiny (random, tiny)")
    ap.add_argument("--small", action="store_true", help="small workloads (CPU smoke run)")
    ap.add_argument("--tiny", action="store_true", help="the tiny model and small workloads (CPU smoke run)")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    ap.add_argument("--max-batched-tokens", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --tiny (or --small)")
    models = ["tiny"] if a.tiny else a.model.split(",")
    if unknown := set(models) - set(MODELS):
        raise SystemExit(f"unknown model(s) {sorted(unknown)}: choose from {', '.join(MODELS)}")
    a.dtype = a.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if device.type == "cpu":
        a.max_batched_tokens = min(a.max_batched_tokens, 512)
        torch.set_num_threads(1)
    runs = {}
    for name in models:
        runs[name] = run_model(a, name, device)
    report = runs[models[0]] if len(runs) == 1 else {"runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    for r in runs.values():
        print(summary(r))
    return report


def run_model(a, name: str, device: torch.device) -> dict:
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[a.dtype]
    p = SMALL if a.tiny or a.small or name == "tiny" else FULL
    import transformers

    from selfhost_engine.tiny_model import build_tokenizer
    transformers.logging.set_verbosity_error()
    reference = None
    if name == "smollm2":
        model, tok = load_smollm2(dtype, device)
        c = model.config
        shape = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                     num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                     num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
                     tie_word_embeddings=c.tie_word_embeddings)
        reference = chat_reference(model, tok, device, 8 if p is SMALL else 48)  # before the engine takes the model
    else:
        shape = TINY if name == "tiny" else QWEN3_06B
        tok = build_tokenizer()
        model = build_model(shape, dtype, device, a.seed)
    vocab = shape["vocab_size"]
    param_bytes = sum(t.numel() * t.element_size() for t in model.parameters())   # tied weights once
    rng = random.Random(a.seed)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "transformers": transformers.__version__, "dtype": a.dtype,
                    "model": {"shape": {"tiny": "tiny", "qwen3-0.6b": "Qwen3-0.6B",
                                        "smollm2": "SmolLM2-135M-Instruct"}[name],
                              "weights": "real" if name == "smollm2" else "random", **shape,
                              "parameters": sum(t.numel() for t in model.parameters()), "param_bytes": param_bytes},
                    "params": p}
    workloads = {c: [([rng.randrange(10, vocab) for _ in range(rng.randint(*p["in_len"]))], rng.randint(*p["out_len"]))
                     for _ in range(2 * c)] for c in p["concurrency"]}
    b1_prompt = [rng.randrange(10, vocab) for _ in range(16 if p is SMALL else 128)]
    eng = make_engine(model, tok, a, p, name=name, eager=False, max_num_seqs=max(p["concurrency"]))
    run_engine(eng, workloads[p["concurrency"][0]][:4], 4)          # warm-up
    section(report, "kv_pool", lambda: {
        "num_blocks": eng.config.num_blocks, "block_size": eng.config.block_size,
        "tokens": eng.config.num_blocks * eng.config.block_size,
        "gib": round(sum(t.numel() * t.element_size() for t in eng.runner.kv.k + eng.runner.kv.v) / 2**30, 3),
        "cuda_graph_buckets": sorted(eng.runner.graphs)})

    def roofline():
        bw = copy_bandwidth(device, dtype, 1 << (30 if device.type == "cuda" else 26))
        tps = decode_b1(eng, b1_prompt, p["b1_out"])
        return {"copy_bandwidth_gb_s": round(bw / 1e9, 1), "roofline_tok_per_s": round(bw / param_bytes, 1),
                "batch1_decode_tok_per_s": round(tps, 1), "fraction_of_roofline": round(tps * param_bytes / bw, 3)}
    section(report, "roofline", roofline)
    for c in p["concurrency"]:
        section(report, f"throughput_c{c}", lambda c=c: {"engine": run_engine(eng, workloads[c], c)})
    section(report, "prefix", lambda: prefix_ttft(eng, vocab, p, rng))
    if reference is not None:
        section(report, "chat_check", lambda: chat_check(eng, tok, reference))
    drop(eng)
    if device.type == "cuda":
        def graphs_off():
            e = make_engine(model, tok, a, p, name=name, eager=True, max_num_seqs=p["concurrency"][0])
            try:
                c = p["concurrency"][0]
                return {"batch1_decode_tok_per_s_eager": round(decode_b1(e, b1_prompt, p["b1_out"]), 1),
                        f"c{c}_output_tok_per_s_eager": run_engine(e, workloads[c], c)["output_tok_per_s"]}
            finally:
                drop(e)
        section(report, "graphs_off", graphs_off)
    else:
        report["graphs_off"] = {"skipped": "CUDA graphs exist on CUDA only"}
    for c in p["concurrency"]:
        key = f"throughput_c{c}"
        section(report, f"static_c{c}", lambda c=c: run_static(model, workloads[c], c, device))
        ours, static = report.get(key, {}).get("engine", {}), report[f"static_c{c}"]
        if "output_tok_per_s" in ours and "output_tok_per_s" in static:
            report[key]["speedup_vs_static"] = round(ours["output_tok_per_s"] / static["output_tok_per_s"], 2)
    del model  # the next model gets the device to itself
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return report


def summary(report: dict) -> str:
    r, g = report.get("roofline", {}), report.get("graphs_off", {})
    concurrency = report["params"]["concurrency"]
    parts = [f"{report['device']} {report['model']['shape']} {report['dtype']}",
             f"b1 decode {r.get('batch1_decode_tok_per_s')} tok/s = {r.get('fraction_of_roofline')} of roofline"]
    parts += [f"C={c} {report.get(f'throughput_c{c}', {}).get('engine', {}).get('output_tok_per_s')} tok/s "
              f"({report.get(f'throughput_c{c}', {}).get('speedup_vs_static')}x static)" for c in concurrency]
    parts.append(f"graphs off b1 {g.get('batch1_decode_tok_per_s_eager', g.get('skipped'))}")
    parts.append(f"prefix-hit TTFT {report.get('prefix', {}).get('speedup')}x")
    if "chat_check" in report:
        parts.append(f"chats token-equal to transformers: {report['chat_check'].get('all_tokens_equal')}")
    errors = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    parts.append(f"errors: {errors or 'none'}")
    return "gpu_engine: " + "; ".join(parts)


if __name__ == "__main__":
    main()
