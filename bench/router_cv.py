"""Which scorer families could rank the router's corpus better? Cross-validated, never on test.

Five folds (by id hash) over the train + calibration splits of `gateway/routing/data`; the test
split is not read. For each scorer: ROC AUC and the frontier share needed to keep 90 / 95 % of
hard prompts, over the out-of-fold scores. Then, for the shipped shape (logistic regression over
static MiniLM vectors + the heuristic features): a learning curve (share of the training folds
used), and where the hard prompts it misses at 95 % recall come from (AUC within each source).

    python bench/router_cv.py [--no-contextual] [--no-sklearn]

`--no-contextual` skips the full MiniLM forward pass over the corpus (~30 s); scikit-learn (a
dependency of sentence-transformers) provides the non-linear models. Prints JSON, then one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from gateway.routing.features import FEATURES  # noqa: E402
from gateway.routing.corpus import load_labelled  # noqa: E402
from gateway.routing.model import fit_logistic, roc_auc, threshold_for_recall  # noqa: E402
from gateway.routing.train import CONFIDENCE_WEIGHT, CV_FOLDS, featurize, fold_of  # noqa: E402

FOLDS = CV_FOLDS  # the training command's folds (`fold_of`: by id hash)


def share_at(scores: np.ndarray, hard: np.ndarray, recall: float) -> float:
    return float(np.mean(scores >= threshold_for_recall(scores, hard, recall)))


def summary(scores: np.ndarray, hard: np.ndarray) -> dict:
    return {"auc": round(roc_auc(scores, hard), 4), "share_at_90": round(share_at(scores, hard, 0.90), 3),
            "share_at_95": round(share_at(scores, hard, 0.95), 3)}


def out_of_fold(fit_predict, x: np.ndarray, y: np.ndarray, w: np.ndarray, folds: np.ndarray,
                fraction: float = 1.0, seed: int = 0) -> np.ndarray:
    out = np.zeros(len(y))
    rng = np.random.default_rng(seed)
    for k in range(FOLDS):
        train = np.where(folds != k)[0]
        if fraction < 1.0:
            train = rng.choice(train, int(len(train) * fraction), replace=False)
        held = folds == k
        out[held] = fit_predict(x[train], y[train], w[train], x[held])
    return out


def logistic(l2: float):
    def fit_predict(x, y, w, held):
        coef, bias = fit_logistic(x, y, w, l2=l2)
        return held @ coef + bias
    return fit_predict


def sklearn_model(make, weighted: bool = True):
    def fit_predict(x, y, w, held):
        model = make()
        if weighted:
            model.fit(x, y, sample_weight=w)
        else:
            model.fit(x, y)
        return model.predict_proba(held)[:, 1] if hasattr(model, "predict_proba") else model.decision_function(held)
    return fit_predict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-contextual", action="store_true")
    ap.add_argument("--no-sklearn", action="store_true")
    args = ap.parse_args()

    from gateway.routing.static_embed import StaticEmbedder

    items = [i for i in load_labelled() if i.split in ("train", "calibration")]
    texts = [i.text for i in items]
    y = np.array([float(i.hard) for i in items])
    w = np.array([CONFIDENCE_WEIGHT[i.confidence] for i in items])
    folds = np.array([fold_of(i.id) for i in items])
    static, raws = featurize(texts, StaticEmbedder())
    feats = np.array([[r[f] for f in FEATURES] for r in raws])
    views = {"static+features": np.hstack([static, feats])}
    if not args.no_contextual:
        from cache.embedder import Embedder

        contextual, _ = featurize(texts, Embedder(memo_size=0, threads=None).head_embedder(64))
        views["contextual+features"] = np.hstack([contextual, feats])
        views["static+contextual+features"] = np.hstack([static, contextual, feats])

    scorers: dict[str, dict] = {}
    for view, x in views.items():
        for l2 in (0.1, 0.3, 1.0):
            scorers[f"logistic l2={l2:g} over {view}"] = summary(out_of_fold(logistic(l2), x, y, w, folds), y)
    if not args.no_sklearn:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.neural_network import MLPClassifier
        from sklearn.svm import SVC

        widest = list(views)[-1]
        x = views[widest]
        scorers[f"gradient boosting over {widest}"] = summary(out_of_fold(sklearn_model(
            lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)), x, y, w, folds), y)
        scorers[f"SVM (RBF, C=3) over {widest}"] = summary(out_of_fold(sklearn_model(
            lambda: SVC(C=3.0, kernel="rbf")), x, y, w, folds), y)
        scorers[f"MLP (64 hidden, unweighted: it takes no sample weights) over {widest}"] = summary(out_of_fold(
            sklearn_model(lambda: MLPClassifier((64,), alpha=1.0, max_iter=500, random_state=0), weighted=False),
            x, y, w, folds), y)

    shipped = views["static+features"]
    curve = {f"{fraction:g}": summary(out_of_fold(logistic(0.1), shipped, y, w, folds, fraction), y)
             for fraction in (0.4, 0.6, 0.8, 1.0)}
    scores = out_of_fold(logistic(0.1), shipped, y, w, folds)
    threshold = threshold_for_recall(scores, y, 0.95)
    source = np.array(["chatterbot/trivia" if i.source == "chatterbot/trivia" else i.source.split("/")[0] for i in items])
    missed = Counter(source[(y > 0.5) & (scores < threshold)].tolist())
    within = {s: round(roc_auc(scores[source == s], y[source == s]), 3) for s in sorted(set(source))
              if 0 < y[source == s].sum() < (source == s).sum()}
    report = {"bench": "router_cv", "rows": len(items), "hard": int(y.sum()), "folds": FOLDS, "scorers": scorers,
              "learning_curve_shipped_shape": curve,
              "missed_hard_at_95_by_source": dict(missed), "auc_within_source": within}
    print(json.dumps(report, indent=2))
    best = min(scorers.items(), key=lambda kv: kv[1]["share_at_95"])
    print(f"router_cv on {len(items)} train+calibration prompts: best share@95 {best[1]['share_at_95']} ({best[0]}, "
          f"AUC {best[1]['auc']}); shipped shape share@95 {curve['1']['share_at_95']} with all training folds, "
          f"{curve['0.4']['share_at_95']} with 40 %; missed hard at 95 %: {dict(missed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
