"""How hard is this request? A score in [0, 1] the router uses to pick a cheap or a strong target.

Why heuristics first: the score is computed on every request, before anything is sent upstream,
so it has to cost well under a millisecond and never fail. The hand features (`features.py`)
are a handful of word counts over the prompt and explainable: every feature's contribution is
reported (the `x-gateway-difficulty` response header), so a surprising route can be traced to
"code=0.35" rather than to an opaque model. The learned default (`learned.py`) takes the same
features plus an embedding and falls back to this scorer.

Optionally the heuristic is blended with a kNN scorer over labelled example prompts (`knn.py`):

    score = (1 - knn_weight) * heuristic + knn_weight * knn

The kNN path embeds one short text, so async callers use `ascore`, which runs it in a worker
thread; the heuristic path stays inline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.routing.features import FEATURES, SINGLE, Conversation, DifficultyWeights, raw_features
from gateway.routing.knn import DEFAULT_EXAMPLES, KnnScorer, minilm_embed

__all__ = [
    "DEFAULT_EXAMPLES",
    "FEATURES",
    "Conversation",
    "Difficulty",
    "DifficultyScorer",
    "DifficultyWeights",
    "KnnScorer",
    "minilm_embed",
]


@dataclass(slots=True)
class Difficulty:
    score: float
    # Each feature's contribution (weight * value); with kNN also "heuristic" and "knn" (the two
    # scores that were blended); for the learned scorer, logit terms ("text", one per feature, "bias").
    features: dict[str, float] = field(default_factory=dict)
    # Which scorer produced it, e.g. "learned@1a2b3c4d5e6f" or "heuristic(fallback)"; "" = heuristic.
    kind: str = ""
    # Calibrated verdict (score >= the policy's derived threshold); None when no threshold applies.
    hard: bool | None = None
    # A candidate scorer's score for the same request (shadow mode): reported, never acted on.
    shadow: Difficulty | None = None
    # What the learned model saw (embedding, raw features), kept for decision records / retraining.
    model_input: dict[str, Any] | None = field(default=None, repr=False)

    def header(self) -> str:
        """Compact explanation, e.g. `0.72; length=0.10 code=0.35 math=0.00 ...`."""
        parts = " ".join(f"{name}={value:.2f}" for name, value in self.features.items())
        if self.kind:
            parts = f"{self.kind} {parts}".strip()
        text = f"{self.score:.2f}; {parts}" if parts else f"{self.score:.2f}"
        if self.hard is not None:
            text += f"; hard={'yes' if self.hard else 'no'}"
        if self.shadow is not None:
            text += f"; shadow={self.shadow.score:.2f} {self.shadow.kind or 'heuristic'}"
        return text



class DifficultyScorer:
    def __init__(
        self,
        weights: DifficultyWeights | None = None,
        knn: KnnScorer | None = None,
        knn_weight: float = 0.5,
    ) -> None:
        if not 0.0 <= knn_weight <= 1.0:
            raise ValueError("knn_weight must be within [0, 1]")
        self.weights = weights or DifficultyWeights()
        self.knn = knn
        self.knn_weight = knn_weight

    def features(self, text: str, conversation: Conversation = SINGLE) -> dict[str, float]:
        """Raw feature values in [0, 1] (before weights)."""
        return raw_features(text, conversation)

    def _contributions(self, raw: dict[str, float]) -> tuple[float, dict[str, float]]:
        w = self.weights
        contributions = {name: round(getattr(w, name) * raw.get(name, 0.0), 4) for name in FEATURES}
        return min(1.0, max(0.0, w.bias + sum(contributions.values()))), contributions

    def _heuristic(self, text: str, conversation: Conversation) -> tuple[float, dict[str, float]]:
        return self._contributions(self.features(text, conversation))

    def score_raw(self, raw: dict[str, float]) -> Difficulty:
        """The heuristic score of already-extracted raw features (the learned scorer's fallback)."""
        heuristic, contributions = self._contributions(raw)
        return Difficulty(round(heuristic, 4), contributions)

    def _blend(self, heuristic: float, contributions: dict[str, float], knn: float | None) -> Difficulty:
        if knn is None:
            return Difficulty(round(heuristic, 4), contributions)
        score = (1.0 - self.knn_weight) * heuristic + self.knn_weight * knn
        features = dict(contributions)
        features["heuristic"] = round(heuristic, 4)
        features["knn"] = round(knn, 4)
        return Difficulty(round(min(1.0, max(0.0, score)), 4), features)

    def score(self, text: str, conversation: Conversation = SINGLE) -> Difficulty:
        """Blocking when a kNN scorer is configured (embedding); async code uses `ascore`.

        `text` is the latest user turn (`protocols/turns.py`), `conversation` what surrounds it."""
        heuristic, contributions = self._heuristic(text, conversation)
        knn = self.knn.score(text) if self.knn is not None and text.strip() else None
        return self._blend(heuristic, contributions, knn)

    def score_heuristic(self, text: str, conversation: Conversation = SINGLE) -> Difficulty:
        """The cheap path only (no embedding), whatever the configuration."""
        heuristic, contributions = self._heuristic(text, conversation)
        return Difficulty(round(heuristic, 4), contributions)

    async def ascore(self, text: str, conversation: Conversation = SINGLE) -> Difficulty:
        """Heuristics inline; the embedding (if any) in a worker thread so the loop keeps serving."""
        heuristic, contributions = self._heuristic(text, conversation)
        knn = None
        if self.knn is not None and text.strip():
            knn = await asyncio.to_thread(self.knn.score, text)
        return self._blend(heuristic, contributions, knn)
