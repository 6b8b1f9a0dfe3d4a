"""Latency of the difficulty scorer: the heuristic path (every request) and the embedding path
(heuristics + MiniLM kNN), over a few hundred varied prompts.

Targets: heuristic p99 <= 1 ms; embedding p99 <= 15 ms (CPU); the learned scorer (the default:
heuristic features + the model's own embedder + logistic regression) p99 <= 5 ms on one CPU core
(`--one-core` pins the process to one).

    python bench/difficulty_latency.py [--prompts 400] [--rounds 5] [--knn-rounds 1] [--torch-threads N]
                                        [--knn-tokens 64] [--no-gc-freeze] [--no-knn] [--no-learned]

Prints one JSON document, then a one-line summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cache.embedder import Embedder  # noqa: E402
from gateway.routing.features import ask_of  # noqa: E402
from gateway.routing.scorer import DEFAULT_EXAMPLES, DifficultyScorer, KnnScorer  # noqa: E402

EASY = [
    "hi", "Thanks!", "What is the capital of {c}?", "Translate '{w}' into {l}.", "Who wrote {b}?",
    "Give me a synonym for {w}.", "Rewrite politely: {s}", "How many {u} are in a {v}?",
    "Tell me a fun fact about {a}.", "Summarize in one line: {s}",
]
HARD = [
    "Prove that {m} and explain each step.",
    "Design a {sys} that handles {n} requests per second; analyze trade-offs, failure modes and consistency.",
    "Implement {algo} in {lang} with O(n log n) time. It must be thread-safe and must include unit tests.",
    "Debug this:\n```{lang}\n{code}\n```\nIt fails intermittently under load. Find the root cause and fix it.",
    "Compare {x} and {y} for {use}; explain why one is better, step by step, with a migration plan.",
    "Compute the integral of x^{k} e^(-x) from 0 to infinity and derive the general formula; prove it by induction.",
]
FILL = {
    "c": ["France", "Peru", "Kenya", "Japan"], "w": ["happy", "quick", "bright", "good night"],
    "l": ["Spanish", "German", "Italian"], "b": ["Hamlet", "Dune", "Emma"],
    "s": ["send me the file now", "the meeting moved to Friday", "we are out of coffee"],
    "u": ["days", "minutes", "grams"], "v": ["week", "hour", "kilogram"], "a": ["cats", "octopuses", "bees"],
    "m": ["there are infinitely many primes", "sqrt(2) is irrational", "every tree with n nodes has n-1 edges"],
    "sys": ["rate limiter", "chat backend", "payment ledger", "search index"], "n": ["10k", "1M"],
    "algo": ["a merge sort", "an interval tree", "a trie with deletion"], "lang": ["python", "rust", "go"],
    "code": ["def f(xs):\n    return sorted(xs)[len(xs)//2]\n" * 3, "for i in range(n):\n    total += a[i] * b[i]\n" * 4],
    "x": ["Postgres", "Kafka", "gRPC"], "y": ["MySQL", "RabbitMQ", "REST"], "use": ["analytics", "billing"],
    "k": ["2", "3", "5"],
}


def fill(template: str, rng: random.Random) -> str:
    out = template
    for key, options in FILL.items():
        out = out.replace("{" + key + "}", rng.choice(options))
    return out


def make_bodies(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        text = fill(rng.choice(HARD if i % 2 else EASY), rng)
        if i % 5 == 0:  # long context: a pasted document
            text = text + "\n\n" + "Background paragraph with some details about the project. " * rng.randint(20, 150)
        messages = [{"role": "system", "content": "You are a helpful assistant."}]
        if i % 7 == 0:  # multi-turn
            for t in range(rng.randint(2, 8)):
                messages.append({"role": "user" if t % 2 == 0 else "assistant", "content": fill(rng.choice(EASY), rng)})
        messages.append({"role": "user", "content": text})
        body: dict = {"model": "auto", "messages": messages}
        if i % 9 == 0:
            body["tools"] = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
        bodies.append(body)
    return bodies


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]

    return {
        "n": len(ordered),
        "p50_ms": round(q(0.50) * 1e3, 4),
        "p90_ms": round(q(0.90) * 1e3, 4),
        "p99_ms": round(q(0.99) * 1e3, 4),
        "max_ms": round(ordered[-1] * 1e3, 4),
        "mean_ms": round(statistics.fmean(ordered) * 1e3, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5, help="heuristic passes over the prompts")
    ap.add_argument("--knn-rounds", type=int, default=1, help="embedding passes over the prompts")
    ap.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--knn-tokens", type=int, default=64, help="word pieces embedded per prompt")
    ap.add_argument("--no-gc-freeze", action="store_true",
                    help="skip gc.freeze() after warm-up (the gateway freezes after startup)")
    ap.add_argument("--no-knn", action="store_true")
    ap.add_argument("--no-learned", action="store_true")
    ap.add_argument("--one-core", action="store_true", help="pin this process to one CPU core")
    ap.add_argument("--learned-rounds", type=int, default=2, help="passes of the learned scorer over the prompts")
    args = ap.parse_args()
    if args.one_core:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})

    bodies = make_bodies(args.prompts)
    heuristic = DifficultyScorer()
    for body in bodies[:50]:
        heuristic.score(*ask_of(body))  # warm the regex caches
    # Wall time is what a request pays; CPU time (this thread) excludes preemption by other
    # processes, which dominates the tail on a shared, oversubscribed host.
    h_samples: list[float] = []
    h_cpu: list[float] = []
    for _ in range(args.rounds):
        for body in bodies:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            heuristic.score(*ask_of(body))
            h_samples.append(time.perf_counter() - t0)
            h_cpu.append(time.thread_time() - c0)
    scores = [heuristic.score(*ask_of(b)).score for b in bodies]
    result: dict = {
        "bench": "difficulty_latency",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "prompts": len(bodies),
        "prompt_chars_p50": sorted(sum(len(m["content"]) for m in b["messages"]) for b in bodies)[len(bodies) // 2],
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "heuristic": percentiles(h_samples),
        "heuristic_cpu": percentiles(h_cpu),
        "heuristic_target_p99_ms": 1.0,
        "score_mean_easy": round(statistics.fmean(scores[0::2]), 3),
        "score_mean_hard": round(statistics.fmean(scores[1::2]), 3),
    }

    if not args.no_knn:
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        t0 = time.perf_counter()
        knn = KnnScorer(DEFAULT_EXAMPLES, Embedder(memo_size=0).head_embedder(args.knn_tokens), k=5)  # no memo: every request pays
        knn.prepare()
        load_s = time.perf_counter() - t0
        blended = DifficultyScorer(knn=knn)
        for body in bodies[:20]:
            blended.score(*ask_of(body))  # warm-up
        if not args.no_gc_freeze:
            # Like the gateway after startup: the long-lived objects of torch/transformers leave
            # the collector's generations, so a full collection does not land inside a request.
            gc.collect()
            gc.freeze()
        e_samples: list[float] = []
        e_cpu: list[float] = []
        for _ in range(args.knn_rounds):
            for body in bodies:
                c0 = time.process_time()  # torch may use several threads: whole-process CPU
                t0 = time.perf_counter()
                blended.score(*ask_of(body))
                e_samples.append(time.perf_counter() - t0)
                e_cpu.append(time.process_time() - c0)
        result["embedding"] = percentiles(e_samples)
        result["embedding_cpu_all_threads"] = percentiles(e_cpu)
        result["embedding_target_p99_ms"] = 15.0
        result["model_load_and_examples_s"] = round(load_s, 2)
        result["torch_threads"] = torch.get_num_threads()
        result["knn_tokens"] = args.knn_tokens
        result["gc_frozen"] = not args.no_gc_freeze

    if not args.no_learned:
        import torch

        from gateway.routing.learned import LearnedScorer
        from gateway.routing.model import LearnedModel

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        # The model's own embedder, without any per-text memo: every request pays in full.
        from gateway.routing import embedders

        model = LearnedModel.load()
        embed = embedders.build(model.report.get("embedder_kind", "minilm"), int(model.report.get("embed_tokens", 64)),
                                memo=False)
        learned = LearnedScorer(model, embed=embed)
        for body in bodies[:20]:
            learned.score(*ask_of(body))  # warm-up: model load, first allocations
        if not args.no_gc_freeze:
            gc.collect()
            gc.freeze()
        l_samples: list[float] = []
        l_cpu: list[float] = []
        for _ in range(args.learned_rounds):
            for body in bodies:
                c0 = time.process_time()
                t0 = time.perf_counter()
                learned.score(*ask_of(body))
                l_samples.append(time.perf_counter() - t0)
                l_cpu.append(time.process_time() - c0)
        result["learned"] = percentiles(l_samples)
        result["learned_cpu_all_threads"] = percentiles(l_cpu)
        result["learned_target_p99_ms"] = 5.0
        result["learned_model"] = learned.model.version

    print(json.dumps(result, indent=2))
    h = result["heuristic"]
    hc = result["heuristic_cpu"]
    line = (
        f"difficulty: heuristic p50 {h['p50_ms']:.3f} ms p99 {h['p99_ms']:.3f} ms "
        f"(cpu p99 {hc['p99_ms']:.3f} ms; target 1 ms)"
    )
    if "embedding" in result:
        e = result["embedding"]
        line += f"; embedding p50 {e['p50_ms']:.2f} ms p99 {e['p99_ms']:.2f} ms (target 15 ms)"
    if "learned" in result:
        e = result["learned"]
        line += f"; learned p50 {e['p50_ms']:.2f} ms p99 {e['p99_ms']:.2f} ms (target 5 ms on one core)"
    line += f"; loadavg {result['loadavg_1m']} on {result['cpus']} CPUs; {len(bodies)} prompts, mean score easy {result['score_mean_easy']} / hard {result['score_mean_hard']}"
    print(line)


if __name__ == "__main__":
    main()
