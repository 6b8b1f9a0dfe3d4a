"""Fit the verifier's logistic model on the tune split and write `verifier_data/weights.json`.

    .venv/bin/python -m cache.verifier_fit [--floor 0.85] [--max-false-hits 0] [--l2 1.0] [--margin 0.05]

Why IRLS by hand: a dozen features and a few hundred pairs need no library (scikit-learn is not
a dependency); Newton steps with a fixed L2 penalty are deterministic, so the same data gives
the same weights on every machine.

The tune pairs are the tune split of `pairs.txt` plus `tune_pairs.txt` (`verifier_pairs.tune_pairs`).
The model is fitted on the tune pairs that the hard rules let through (the others never reach
it). The cutoff: the lowest probability at which, on the tune split and at the similarity floor
`--floor` (the policy's default `threshold`), at most `--max-false-hits` near misses would be
served, plus a margin (in-sample scores flatter the model). Only the tune split is read here; the test split is for
`bench/semantic_cache_quality.py`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .verifier import FEATURES, WEIGHTS_PATH, equivalent, pair_features, refusal
from .verifier_pairs import Pair, tune_pairs
from .verifier_text import analyse


FOLDS = 4


def similarities(pairs: list[Pair]) -> np.ndarray:
    from .embedder import get_embedder

    embedder = get_embedder()
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vectors = dict(zip(texts, embedder.embed(texts)))
    return np.array([float(vectors[p.a] @ vectors[p.b]) for p in pairs])


def design(pairs: list[Pair], sims: np.ndarray) -> np.ndarray:
    return np.stack([pair_features(analyse(p.a), analyse(p.b), float(s)) for p, s in zip(pairs, sims)])


# Signs the weights must keep. A feature that measures a difference (a question word, a name, a
# closed-class word one side lacks, a swapped or extra content word, a role on one side only) may
# only lower the score; overlap (similarity, shared content words, similar wording) may only raise
# it. On a hand-written set the fit would otherwise learn "reworded, so the same question" from how
# the pairs happened to be written. The square of the wording ratio stays free: it is what lets
# "one word swapped in an otherwise identical request" score low.
SIGNS: dict[str, int] = {
    **dict.fromkeys(("slot_omitted", "polar_mismatch", "role_partial", "content_diff", "content_substituted",
                     "caps_diff", "aligned_substituted", "aligned_inserted", "question_diff"), -1),
    **dict.fromkeys(("similarity", "content_jaccard", "sequence_ratio"), 1),
}


def fit_signed(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """`fit_logistic` with the weights kept to their `SIGNS` (active set: the weight furthest on
    the wrong side is fixed at 0 and the rest refitted, until none is; deterministic)."""
    active = list(range(len(FEATURES)))
    while True:
        w, bias = fit_logistic(x[:, active], y, l2)
        weights = np.zeros(len(FEATURES))
        weights[active] = w
        wrong = [j for j in active if SIGNS.get(FEATURES[j], 0) * weights[j] < 0]
        if not wrong:
            return weights, bias
        active.remove(max(wrong, key=lambda j: -SIGNS[FEATURES[j]] * weights[j]))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method (IRLS); the bias is not penalised."""
    xb = np.hstack([x, np.ones((x.shape[0], 1))])
    w = np.zeros(xb.shape[1])
    penalty = np.full(xb.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) + penalty * w
        hess = xb.T @ (xb * (p * (1 - p))[:, None]) + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w[:-1], float(w[-1])


def probabilities(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x @ weights + bias, -700, 700)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--floor", type=float, default=0.85, help="similarity floor the cutoff is chosen at")
    ap.add_argument("--max-false-hits", type=int, default=0)
    ap.add_argument("--margin", type=float, default=0.05, help="added to the chosen cutoff (safety)")
    ap.add_argument("--l2", type=float, default=1.0)
    args = ap.parse_args(argv)

    tune = tune_pairs()
    sims = similarities(tune)
    x = design(tune, sims)
    y = np.array([1.0 if p.same else 0.0 for p in tune])
    profiles = [(analyse(p.a), analyse(p.b)) for p in tune]
    refused = np.array([refusal(a, b) is not None for a, b in profiles])
    same_words = np.array([not r and equivalent(a, b) for r, (a, b) in zip(refused, profiles)])
    passes = ~refused & ~same_words  # the model only sees what neither the rules nor equivalence decide
    weights, bias = fit_signed(x[passes], y[passes], args.l2)
    prob = probabilities(x, weights, bias)
    candidate = (sims >= args.floor) & passes
    # Out-of-fold scores (4 folds by block): how the model scores questions it was not fitted on.
    blocks = np.array([p.block for p in tune])
    held_out = np.zeros(len(tune))
    for fold in range(FOLDS):
        test = blocks % FOLDS == fold
        w, b = fit_signed(x[~test & passes], y[~test & passes], args.l2)
        held_out[test] = probabilities(x[test], w, b)
    # Lowest cutoff that lets at most max_false_hits tune near misses through, in-sample and out
    # of fold alike, then the margin.
    base = 0.5
    for scores in (prob, held_out):
        negatives = np.sort(scores[candidate & (y == 0)])[::-1]
        if len(negatives) > args.max_false_hits:
            base = max(base, float(negatives[args.max_false_hits]))
    cutoff = float(min(0.99, base + args.margin))
    served = (candidate & (prob >= cutoff)) | ((sims >= args.floor) & same_words)
    report = {
        "pairs": len(tune),
        "false_hits": int((served & (y == 0)).sum()),
        "near_misses": int((y == 0).sum()),
        "near_misses_refused_by_rules": int((refused & (y == 0)).sum()),
        "paraphrases_refused_by_rules": int((refused & (y == 1)).sum()),
        "paraphrase_hits": int((served & (y == 1)).sum()),
        "equivalent_paraphrases": int((same_words & (y == 1)).sum()),
        "equivalent_near_misses": int((same_words & (y == 0)).sum()),
        "paraphrase_hits_out_of_fold": int((candidate & (held_out >= cutoff) & (y == 1)).sum()),
        "false_hits_out_of_fold": int((candidate & (held_out >= cutoff) & (y == 0)).sum()),
        "paraphrases": int((y == 1).sum()),
    }
    doc = {
        "version": 1,
        "features": list(FEATURES),
        "weights": [round(float(w), 6) for w in weights],
        "bias": round(bias, 6),
        "cutoff": round(cutoff, 4),
        "fitted": {"split": "tune", "floor": args.floor, "l2": args.l2, "margin": args.margin,
                   "max_false_hits": args.max_false_hits, **report},
    }
    WEIGHTS_PATH.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    json.dump(doc, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
