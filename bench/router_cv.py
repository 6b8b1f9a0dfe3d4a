"""Which scorer families rank real chat traffic best? Cross-validated, never on test.

Five folds (by conversation hash) over the train + calibration splits of the router's labelled
ShareGPT turns (`--data corpus`: the older corpus); the test split is not read. For each scorer:
ROC AUC and the frontier share needed to keep 90 / 95 / 99 % of hard turns, over the out-of-fold
scores: logistic regression over static MiniLM vectors, over the MiniLM sentence embedding (the
semantic cache's forward pass), over both, each with the heuristic and conversation features;
gradient boosting, an RBF SVM and an MLP over the widest view; the older corpus added to the
training folds; and (`--finetune`) MiniLM fine-tuned end to end, trained on the train split and
scored on the calibration split beside the logistic model fitted the same way. Then a learning
curve for the shipped shape and where the hard turns it misses at 95 % come from.

    python bench/router_cv.py [--data sharegpt|corpus] [--tokens 128] [--no-sklearn] [--finetune]

Prints JSON, then one line.
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

from gateway.routing.corpus import load_labelled  # noqa: E402
from gateway.routing.model import fit_logistic, roc_auc, threshold_for_recall  # noqa: E402
from gateway.routing.train import CONFIDENCE_WEIGHT, CV_FOLDS, MODEL_FEATURES, featurize, fold_of  # noqa: E402

FOLDS = CV_FOLDS  # the training command's folds (`fold_of`: by id hash)


def share_at(scores: np.ndarray, hard: np.ndarray, recall: float) -> float:
    return float(np.mean(scores >= threshold_for_recall(scores, hard, recall)))


def summary(scores: np.ndarray, hard: np.ndarray) -> dict:
    return {"auc": round(roc_auc(scores, hard), 4), "share_at_90": round(share_at(scores, hard, 0.90), 3),
            "share_at_95": round(share_at(scores, hard, 0.95), 3), "share_at_99": round(share_at(scores, hard, 0.99), 3)}


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


def finetuned(items, tokens: int, epochs: int) -> dict:
    """MiniLM fine-tuned end to end (mean pooling + a linear head, AdamW 3e-5 / head 1e-3, batch 16),
    trained on the train split and scored on the calibration split after each epoch."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from cache.embedder import default_model_path

    torch.manual_seed(14)
    train = [i for i in items if i.split == "train"]
    held = [i for i in items if i.split == "calibration"]
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    encoder = AutoModel.from_pretrained(default_model_path())
    head = torch.nn.Linear(encoder.config.hidden_size, 1)
    optimiser = torch.optim.AdamW([{"params": encoder.parameters(), "lr": 3e-5},
                                   {"params": head.parameters(), "lr": 1e-3}], weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")

    def logits(batch):
        enc = tokenizer([i.ask()[0] for i in batch], truncation=True, max_length=tokens, padding=True, return_tensors="pt")
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (encoder(**enc).last_hidden_state * mask).sum(1) / mask.sum(1)
        return head(pooled).squeeze(-1)

    per_epoch = []
    for epoch in range(epochs):
        encoder.train()
        order = np.random.default_rng(epoch).permutation(len(train))
        for start in range(0, len(order), 16):
            batch = [train[j] for j in order[start:start + 16]]
            weight = torch.tensor([CONFIDENCE_WEIGHT[i.confidence] for i in batch])
            loss = (loss_fn(logits(batch), torch.tensor([float(i.hard) for i in batch])) * weight).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        encoder.eval()
        with torch.no_grad():
            scores = torch.cat([logits(held[k:k + 64]) for k in range(0, len(held), 64)]).numpy()
        per_epoch.append({"epoch": epoch + 1, **summary(scores, np.array([float(i.hard) for i in held]))})
    return {"trained_on": len(train), "scored_on": len(held), "epochs": per_epoch}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["sharegpt", "corpus"], default="sharegpt")
    ap.add_argument("--tokens", type=int, default=128, help="word pieces of each turn that are embedded")
    ap.add_argument("--no-contextual", action="store_true")
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--finetune", action="store_true", help="also fine-tune MiniLM (CPU: ~10-30 min)")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    args = ap.parse_args()

    from gateway.routing import embedders

    if args.data == "sharegpt":
        from gateway.routing.sharegpt import load_labelled as load_traffic

        everything = load_traffic()
    else:
        everything = load_labelled()
    items = [i for i in everything if i.split in ("train", "calibration")]
    asks = [i.ask() for i in items]
    y = np.array([float(i.hard) for i in items])
    w = np.array([CONFIDENCE_WEIGHT[i.confidence] for i in items])
    folds = np.array([fold_of(i.id) for i in items])
    static, raws = featurize(asks, embedders.build("static", args.tokens))
    feats = np.array([[r[f] for f in MODEL_FEATURES] for r in raws])
    views = {"static+features": np.hstack([static, feats])}
    if not args.no_contextual:
        contextual, _ = featurize(asks, embedders.build("minilm", args.tokens, memo=False))
        views["contextual+features"] = np.hstack([contextual, feats])
        views["static+contextual+features"] = np.hstack([static, contextual, feats])

    scorers: dict[str, dict] = {"length": summary(np.log1p([len(text) for text, _ in asks]), y)}
    for view, x in views.items():
        for l2 in (0.3, 1.0, 3.0):
            scorers[f"logistic l2={l2:g} over {view}"] = summary(out_of_fold(logistic(l2), x, y, w, folds), y)
    widest_name = list(views)[-1]
    widest = views[widest_name]
    if args.data == "sharegpt":  # does the older corpus help on real traffic? (added to every training fold)
        old = load_labelled()
        old_static, old_raws = featurize([i.ask() for i in old], embedders.build("static", args.tokens))
        parts = [old_static] + ([featurize([i.ask() for i in old], embedders.build("minilm", args.tokens, memo=False))[0]]
                                if not args.no_contextual else [])
        old_x = np.hstack(parts + [np.array([[r[f] for f in MODEL_FEATURES] for r in old_raws])])
        old_y = np.array([float(i.hard) for i in old])
        old_w = np.array([CONFIDENCE_WEIGHT[i.confidence] for i in old])

        def with_old(x, yy, ww, held):
            coef, bias = fit_logistic(np.vstack([x, old_x]), np.concatenate([yy, old_y]), np.concatenate([ww, old_w]), l2=1.0)
            return held @ coef + bias

        scorers[f"logistic l2=1 over {widest_name}, older corpus added to training"] = summary(
            out_of_fold(with_old, widest, y, w, folds), y)
    if not args.no_sklearn:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.neural_network import MLPClassifier
        from sklearn.svm import SVC

        scorers[f"gradient boosting over {widest_name}"] = summary(out_of_fold(sklearn_model(
            lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)), widest, y, w, folds), y)
        scorers[f"SVM (RBF, C=1) over {widest_name}"] = summary(out_of_fold(sklearn_model(
            lambda: SVC(C=1.0, kernel="rbf")), widest, y, w, folds), y)
        scorers[f"MLP (64 hidden, unweighted: it takes no sample weights) over {widest_name}"] = summary(out_of_fold(
            sklearn_model(lambda: MLPClassifier((64,), alpha=1.0, max_iter=500, random_state=0), weighted=False),
            widest, y, w, folds), y)

    shipped = widest
    curve = {f"{fraction:g}": summary(out_of_fold(logistic(1.0), shipped, y, w, folds, fraction), y)
             for fraction in (0.4, 0.6, 0.8, 1.0)}
    scores = out_of_fold(logistic(1.0), shipped, y, w, folds)
    threshold = threshold_for_recall(scores, y, 0.95)
    source = np.array([("first turn" if i.id.endswith("#0") else "later turn") if i.source == "sharegpt"
                       else "chatterbot/trivia" if i.source == "chatterbot/trivia" else i.source.split("/")[0]
                       for i in items])
    missed = Counter(source[(y > 0.5) & (scores < threshold)].tolist())
    within = {s: round(roc_auc(scores[source == s], y[source == s]), 3) for s in sorted(set(source))
              if 0 < y[source == s].sum() < (source == s).sum()}
    report = {"bench": "router_cv", "data": args.data, "tokens": args.tokens, "rows": len(items), "hard": int(y.sum()),
              "folds": FOLDS, "scorers": scorers, "learning_curve_shipped_shape": curve,
              "missed_hard_at_95_by_source": dict(missed), "auc_within_source": within}
    if args.finetune:
        held = np.array([i.split == "calibration" for i in items])
        coef, bias = fit_logistic(shipped[~held], y[~held], w[~held], l2=1.0)
        report["finetune_vs_shipped_shape_on_calibration"] = {
            "shipped_shape": summary(shipped[held] @ coef + bias, y[held]),
            "finetuned_minilm": finetuned(items, args.tokens, args.finetune_epochs)}
    print(json.dumps(report, indent=2))
    best = min(scorers.items(), key=lambda kv: kv[1]["share_at_95"])
    print(f"router_cv on {len(items)} train+calibration turns ({args.data}): best share@95 {best[1]['share_at_95']} "
          f"({best[0]}, AUC {best[1]['auc']}); shipped shape share@95 {curve['1']['share_at_95']} with all training "
          f"folds, {curve['0.4']['share_at_95']} with 40 %; missed hard at 95 %: {dict(missed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
