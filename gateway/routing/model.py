"""The learned difficulty model: logistic regression over a MiniLM embedding plus the heuristic features.

Why this shape: the heuristic features alone rank worse than prompt length on real traffic, and
kNN over a few dozen phrases is only as good as its phrases. A linear model over the sentence
embedding learns which *kinds* of request are hard from ~1,000 labelled prompts, stays a single
dot product at request time (the embedding is the whole cost), and remains explainable: the
logit splits exactly into one term for the text, one per heuristic feature, and the bias.

    logit = w_text · embedding + Σ_f w_f · feature_f + bias        score = sigmoid(logit)

The file (`.npz`, a few kB) holds the weights, the calibration split's scores and labels (so a
policy can ask for a hard-prompt recall or a frontier share and get a threshold without
retraining) and a JSON report of how it was trained. Everything here is numpy: training is
Newton's method on an L2-regularised log-loss, deterministic for the same inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.routing.features import CONVERSATION_FEATURES, FEATURES

DEFAULT_MODEL = Path(__file__).with_name("data") / "model.npz"
FORMAT = 1


class ModelError(ValueError):
    """A model file that cannot be used (missing, corrupt, or for another feature set)."""


# ---------------------------------------------------------------------------------------------
# Logistic regression (Newton / IRLS)


def sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, l2: float = 1.0,
                 iterations: int = 50, tol: float = 1e-8) -> tuple[np.ndarray, float]:
    """Minimise Σ weight·logloss(y, sigmoid(x·w + b)) + l2/2·|w|² (the bias is not penalised).

    `y` may be soft (any value in [0, 1]): production feedback arrives as 0–1 scores. Newton's
    method converges in ~10 steps at this size and, unlike SGD, has no random state: the same
    inputs give the same weights bit for bit.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    sw = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    xb = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(iterations):
        p = sigmoid(xb @ theta)
        grad = xb.T @ (sw * (p - y)) + reg * theta
        hess = (xb * (sw * p * (1.0 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if float(np.max(np.abs(step))) < tol:
            break
    return theta[:-1], float(theta[-1])


# ---------------------------------------------------------------------------------------------
# Metrics (shared with bench/router_quality.py)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random hard prompt outscores a random easy one (ties count half)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def bootstrap_auc(scores: np.ndarray, labels: np.ndarray, rounds: int = 1000, seed: int = 14,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the AUC over resamples of the test set."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        value = roc_auc(scores[idx], labels[idx])
        if not math.isnan(value):
            values.append(value)
    lo, hi = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


@dataclass(frozen=True, slots=True)
class Calibration:
    """A threshold and what it is expected to do (measured on the calibration split)."""

    threshold: float
    expected_frontier_share: float
    expected_hard_recall: float
    asked: str  # e.g. "hard_recall=0.95"

    def describe(self) -> str:
        return (f"{self.asked}: threshold {self.threshold:.4f}, expected frontier share "
                f"{self.expected_frontier_share:.3f}, expected hard recall {self.expected_hard_recall:.3f}")


def threshold_for_recall(scores: np.ndarray, labels: np.ndarray, recall: float) -> float:
    """The highest threshold (score >= threshold is 'hard') that keeps `recall` of hard prompts."""
    hard = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels) > 0.5])[::-1]
    if len(hard) == 0:
        raise ModelError("no hard prompts to calibrate on")
    k = min(len(hard), max(1, math.ceil(recall * len(hard) - 1e-9)))
    return float(hard[k - 1])


def threshold_for_share(scores: np.ndarray, share: float) -> float:
    """The lowest threshold that sends at most `share` of traffic to the frontier."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    k = int(math.floor(share * len(ordered) + 1e-9))
    if k <= 0:
        return float(np.nextafter(ordered[0], np.inf))
    if k >= len(ordered):
        return float(ordered[-1])
    # Ties at the boundary would push the share past `share`: step just above the next score.
    return float(ordered[k - 1]) if ordered[k - 1] > ordered[k] else float(np.nextafter(ordered[k], np.inf))


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(frontier share, hard recall) when score >= threshold goes to the frontier."""
    scores = np.asarray(scores, dtype=np.float64)
    hard = np.asarray(labels) > 0.5
    sent = scores >= threshold
    recall = float(sent[hard].mean()) if hard.any() else float("nan")
    return float(sent.mean()), recall


def calibrate(scores: np.ndarray, labels: np.ndarray, *, hard_recall: float | None = None,
              frontier_share: float | None = None) -> Calibration:
    if (hard_recall is None) == (frontier_share is None):
        raise ValueError("give exactly one of hard_recall or frontier_share")
    if hard_recall is not None:
        threshold, asked = threshold_for_recall(scores, labels, hard_recall), f"hard_recall={hard_recall:g}"
    else:
        threshold, asked = threshold_for_share(scores, float(frontier_share)), f"frontier_share={frontier_share:g}"
    share, recall = operating_point(scores, labels, threshold)
    return Calibration(threshold, share, recall, asked)


# ---------------------------------------------------------------------------------------------
# The model file


@dataclass(frozen=True, slots=True)
class LearnedModel:
    w_text: np.ndarray  # (embedding dim,)
    w_features: np.ndarray  # (len(features),)
    bias: float
    features: tuple[str, ...]
    calib_scores: np.ndarray  # scores of the calibration split, for thresholds
    calib_labels: np.ndarray  # 1 = hard
    # The heuristic scorer's scores on the same split: the fallback gets its own threshold.
    calib_heuristic: np.ndarray = field(default_factory=lambda: np.zeros(0))
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """Content hash of the weights: names exactly which model scored a request."""
        digest = hashlib.sha256(self.w_text.tobytes() + self.w_features.tobytes() + np.float64(self.bias).tobytes())
        return digest.hexdigest()[:12]

    def logit_parts(self, embedding: np.ndarray, raw: dict[str, float]) -> tuple[float, dict[str, float]]:
        """(text term, per-feature terms): their sum plus the bias is the logit."""
        text = float(np.dot(self.w_text, embedding))
        parts = {name: float(w) * float(raw.get(name, 0.0)) for name, w in zip(self.features, self.w_features)}
        return text, parts

    def score_row(self, embedding: np.ndarray, raw: dict[str, float]) -> float:
        text, parts = self.logit_parts(embedding, raw)
        return float(sigmoid(text + sum(parts.values()) + self.bias))

    def calibration(self, *, hard_recall: float | None = None, frontier_share: float | None = None,
                    heuristic: bool = False) -> Calibration:
        """The threshold for what a policy asked; `heuristic=True`: for the fallback scorer's scale."""
        scores = self.calib_heuristic if heuristic else self.calib_scores
        if len(scores) != len(self.calib_labels) or len(scores) == 0:
            raise ModelError("this model file has no calibration scores for that scorer")
        return calibrate(scores, self.calib_labels, hard_recall=hard_recall, frontier_share=frontier_share)

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(
            buf, format=np.int64(FORMAT), w_text=self.w_text.astype(np.float32),
            w_features=self.w_features.astype(np.float32), bias=np.float64(self.bias),
            features=np.array(self.features), calib_scores=self.calib_scores.astype(np.float32),
            calib_labels=self.calib_labels.astype(np.int8), calib_heuristic=self.calib_heuristic.astype(np.float32),
            report=np.array(json.dumps(self.report, sort_keys=True)),
        )
        Path(path).write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL) -> LearnedModel:
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                if int(data["format"]) != FORMAT:
                    raise ModelError(f"{path}: model format {int(data['format'])}, this gateway reads {FORMAT}")
                features = tuple(str(f) for f in data["features"])
                unknown = [f for f in features if f not in FEATURES + CONVERSATION_FEATURES]
                if unknown:
                    raise ModelError(f"{path}: unknown features {unknown}")
                return cls(
                    w_text=data["w_text"].astype(np.float32), w_features=data["w_features"].astype(np.float32),
                    bias=float(data["bias"]), features=features, calib_scores=data["calib_scores"].astype(np.float64),
                    calib_labels=data["calib_labels"].astype(np.int64),
                    calib_heuristic=data["calib_heuristic"].astype(np.float64), report=json.loads(str(data["report"])),
                )
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"cannot load router model {path}: {exc}") from exc


_loaded: dict[str, LearnedModel] = {}


def load_cached(path: str | Path | None = None) -> LearnedModel:
    """Load a model file once per process (policy reloads reuse it)."""
    key = str(Path(path or DEFAULT_MODEL).resolve())
    model = _loaded.get(key)
    if model is None:
        model = _loaded[key] = LearnedModel.load(key)
    return model
