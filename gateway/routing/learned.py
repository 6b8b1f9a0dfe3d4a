"""The default difficulty scorer: the learned model (`gateway/routing/model.py`) at request time.

Same interface as `DifficultyScorer` (`score`, `ascore`, `score_heuristic`, `features`), so the
router does not care which one a policy chose. Why it keeps a heuristic scorer inside: the
heuristic features are half of the model's input, and the heuristic score is the fallback when
embeddings are unavailable (sentence-transformers not installed, model files missing, the
encoder raising): a request is never refused because the router could not embed it. The first
failure is logged once and the scorer stays on the fallback; the header says so
(`heuristic(fallback)`).

The embedder is the one the model was trained with (`embedder_for`, `embedders.py`): static
MiniLM word-piece means, the process-wide contextual MiniLM it shares with the semantic cache, or
both side by side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.routing.embedders import EMBED_CHARS
from gateway.routing.features import SINGLE, Conversation
from gateway.routing.scorer import Difficulty, DifficultyScorer
from gateway.routing.model import Calibration, LearnedModel, sigmoid

log = logging.getLogger("gateway.difficulty")

Embed = Callable[[list[str]], np.ndarray]


def embedder_for(model: LearnedModel) -> Embed:
    """The embedder a model was trained with, as its file records it (`embedders.build`): the
    kind (static word-piece means, the contextual MiniLM the semantic cache shares, or both) and
    the word-piece window. Files from before the kind was recorded used the contextual MiniLM
    over 64 word pieces."""
    from gateway.routing import embedders

    return embedders.build(model.report.get("embedder_kind", "minilm"), int(model.report.get("embed_tokens", 64)),
                           encoder=model.report.get("encoder"))


class LearnedScorer:
    """Logistic regression over (embedding of the prompt's head, heuristic features)."""

    knn = None  # interface parity with DifficultyScorer (no kNN blend here)

    def __init__(self, model: LearnedModel, *, embed: Embed | None = None,
                 heuristic: DifficultyScorer | None = None, calibration: Calibration | None = None,
                 fallback_calibration: Calibration | None = None, shadow: Any | None = None) -> None:
        self.model = model
        self.heuristic = heuristic or DifficultyScorer()
        self.calibration = calibration
        self.fallback_calibration = fallback_calibration
        self.shadow = shadow
        self.kind = f"learned@{model.version}"
        self._embed = embed
        self._broken: str | None = None
        self.use_embeddings = True  # False: the heuristic scorer, calibrated on the same split

    def describe(self) -> str:
        """One line for logs and `hybrid-gateway router info`: which model, which threshold."""
        parts = [self.kind]
        if self.calibration is not None and self.use_embeddings:
            parts.append(self.calibration.describe())
        if self.fallback_calibration is not None:
            parts.append("fallback " + self.fallback_calibration.describe())
        if self.shadow is not None:
            parts.append(f"shadow {getattr(self.shadow, 'kind', '') or 'heuristic'}")
        return "; ".join(parts)

    @property
    def threshold(self) -> float | None:
        return self.calibration.threshold if self.calibration is not None else None

    def features(self, text: str, conversation: Conversation = SINGLE) -> dict[str, float]:
        return self.heuristic.features(text, conversation)

    def _embedding(self, text: str) -> np.ndarray | None:
        """One normalised vector, or None once embeddings have proved unavailable."""
        if self._broken is not None or not self.use_embeddings:
            return None
        try:
            embed = self._embed = self._embed or embedder_for(self.model)
            return np.asarray(embed([text[:EMBED_CHARS] or " "]), dtype=np.float32)[0]
        except Exception as exc:  # noqa: BLE001 - any failure to embed means: fall back, keep serving
            self._broken = f"{type(exc).__name__}: {exc}"
            log.warning("difficulty: embeddings unavailable, using the heuristic scorer: %s", self._broken)
            return None

    def _verdict(self, score: float, calibration: Calibration | None) -> bool | None:
        return None if calibration is None else score >= calibration.threshold

    def _from_parts(self, raw: dict[str, float], embedding: np.ndarray | None) -> Difficulty:
        if embedding is None:
            fallback = self.heuristic.score_raw(raw)
            fallback.kind = "heuristic(fallback)" if self.use_embeddings else "heuristic"
            fallback.hard = self._verdict(fallback.score, self.fallback_calibration)
            return fallback
        text, parts = self.model.logit_parts(embedding, raw)
        score = float(sigmoid(text + sum(parts.values()) + self.model.bias))
        terms = {"text": round(text, 4), **{k: round(v, 4) for k, v in parts.items()}, "bias": round(self.model.bias, 4)}
        return Difficulty(round(score, 4), terms, kind=self.kind, hard=self._verdict(score, self.calibration),
                          model_input={"embedding": embedding, "features": raw})

    def score(self, text: str, conversation: Conversation = SINGLE) -> Difficulty:
        """Blocking (embeds); async code uses `ascore`. The model uses the features its file
        names (`LearnedModel.features`), of the ask's text and of the conversation."""
        raw = self.features(text, conversation)
        primary = self._from_parts(raw, self._embedding(text) if text.strip() else None)
        primary.shadow = self.shadow.score(text, conversation) if self.shadow is not None else None
        return primary

    def score_heuristic(self, text: str, conversation: Conversation = SINGLE) -> Difficulty:
        return self.heuristic.score_heuristic(text, conversation)

    async def ascore(self, text: str, conversation: Conversation = SINGLE) -> Difficulty:
        """Heuristic features inline; the embedding in a worker thread so the loop keeps serving."""
        raw = self.features(text, conversation)
        wanted = text.strip() and self._broken is None and self.use_embeddings
        embedding = await asyncio.to_thread(self._embedding, text) if wanted else None
        primary = self._from_parts(raw, embedding)
        primary.shadow = await self.shadow.ascore(text, conversation) if self.shadow is not None else None
        return primary


# ---------------------------------------------------------------------------------------------
# From the policy


DEFAULT_HARD_RECALL = 0.95


def _heuristic_scorer(spec: Any) -> DifficultyScorer:
    from gateway.routing.features import DifficultyWeights

    overrides = {name: getattr(spec.weights, name) for name in spec.weights.__struct_fields__
                 if getattr(spec.weights, name) is not None}
    return DifficultyScorer(DifficultyWeights(**overrides))


def _shadow_scorer(shadow: Any, heuristic: DifficultyScorer) -> Any:
    from gateway.routing.model import load_cached

    if shadow.scorer == "heuristic":
        return heuristic
    return LearnedScorer(load_cached(shadow.model), heuristic=heuristic)


def build_scorer(spec: Any) -> Any:
    """The scorer a policy's `difficulty:` block asks for (`policies.schema.DifficultySpec`).

    Learned by default. A model file named in the policy must load (a typo is an error at start or
    reload, never a silent fallback); the shipped default falling to the heuristic only happens if
    the package data is missing, and is logged.
    """
    from gateway.routing.knn import KnnScorer
    from gateway.routing.model import ModelError, load_cached

    heuristic = _heuristic_scorer(spec)
    if spec.knn:  # the legacy heuristic + kNN blend
        return DifficultyScorer(heuristic.weights, knn=KnnScorer(k=spec.knn_k), knn_weight=spec.knn_weight)
    try:
        model = load_cached(spec.model)
    except ModelError:
        if spec.model is not None:
            raise
        log.exception("difficulty: the shipped router model cannot be loaded; using the heuristic scorer")
        return heuristic
    asked = ({"frontier_share": spec.frontier_share} if spec.frontier_share is not None
             else {"hard_recall": spec.hard_recall if spec.hard_recall is not None else DEFAULT_HARD_RECALL})
    shadow = _shadow_scorer(spec.shadow, heuristic) if spec.shadow is not None else None
    fallback = model.calibration(heuristic=True, **asked) if spec.weights == type(spec.weights)() else None
    scorer = LearnedScorer(model, heuristic=heuristic, calibration=model.calibration(**asked),
                           fallback_calibration=fallback, shadow=shadow)
    if spec.scorer == "heuristic":
        scorer.use_embeddings = False
        scorer.kind = "heuristic"
    return scorer


def warm_scorer(scorer: Any) -> None:
    """Load the embedder at startup (off the request path): the first `auto` request must not
    pay the model load. Any failure here is the fallback's business, not the startup's."""
    try:
        scorer.score("warm up")
    except Exception:  # noqa: BLE001
        log.warning("difficulty: warm-up failed", exc_info=True)
