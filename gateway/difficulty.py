"""How hard is this request? A score in [0, 1] the router uses to pick a cheap or a strong target.

(~550 lines on purpose: the heuristic's features, its weights and the legacy kNN blend are one
explainable model whose contributions must add up in the `x-gateway-difficulty` header; the
learned default lives in `learned_scorer.py` and falls back to this one.)

Why heuristics first: the score is computed on every request, before anything is sent upstream,
so it has to cost well under a millisecond and never fail. A handful of precompiled regular
expressions over the prompt text gets there and is explainable: every feature's contribution is
reported (the `x-gateway-difficulty` response header), so a surprising route can be traced to
"code=0.35" rather than to an opaque model.

Heuristic score (clipped-linear, not logistic, so that the contributions in the header add up to
the score the router saw):

    raw_f        = feature value in [0, 1] (saturating: more evidence stops counting past a point)
    contribution = weight_f * raw_f
    heuristic    = clip(bias + sum(contributions), 0, 1)

Optionally, a kNN scorer over labelled example prompts (offline MiniLM embeddings) catches what
keywords miss ("why do ships float?" is easy, "is P equal to NP?" is not). The two are blended:

    score = (1 - knn_weight) * heuristic + knn_weight * knn

The kNN path embeds one short text (a few ms on a multi-core CPU), so async callers use `ascore`, which runs it in a
worker thread; the heuristic path stays inline.
"""

from __future__ import annotations

import asyncio
import math
import re
import string
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from protocols.text import conversation_text

__all__ = [
    "DEFAULT_EXAMPLES",
    "Difficulty",
    "DifficultyScorer",
    "DifficultyWeights",
    "KnnScorer",
    "minilm_embed",
]

# Only this much of a prompt is scanned for cues (head and tail); length still counts all of it.
# Cues in the middle of a 100 kB document add nothing the head and tail did not already show, and
# scanning stays O(1) per request.
_SCAN_HEAD = 3000
_SCAN_TAIL = 1000
# Length feature: log-scaled between these prompt sizes (characters): 0 at or below the first,
# 1 at or beyond the second.
_LEN_LOW = 80.0
_LEN_HIGH = 12000.0
# kNN input: the head of the last user message. Transformer cost on a CPU grows with the number
# of word pieces, and the kind of task is almost always stated in the first sentences, so the text
# is cut to ~400 characters here and to 64 word pieces by `minilm_embed` (p99 within 15 ms on 2 cores).
_KNN_CHARS = 400


@dataclass(frozen=True, slots=True)
class DifficultyWeights:
    """One weight per feature (its contribution when the feature is saturated) plus a bias.

    Defaults are hand-tuned so that a greeting scores ~0, a one-line fact question < 0.2, and a
    proof, a system design or a multi-step coding task > 0.5.
    """

    length: float = 0.20
    code: float = 0.45
    math: float = 0.50
    reasoning: float = 0.50
    constraints: float = 0.15
    turns: float = 0.10
    tools: float = 0.15
    # Unclipped log length (0 at 1 char, 1 at 12,000): no weight in the hand-tuned score; the
    # learned model uses it (the clipped `length` above is 0 for every prompt under 80 chars).
    chars: float = 0.0
    bias: float = 0.0


FEATURES: tuple[str, ...] = tuple(f.name for f in fields(DifficultyWeights) if f.name != "bias")


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


# ---------------------------------------------------------------------------------------------
# Features: each returns a value in [0, 1]
#
# Speed: Python's `re` tries every alternative of a keyword alternation at every position, which
# costs milliseconds on a long prompt. So the text is lowered and split into words ONCE; single
# keywords are set lookups, phrases and operator tokens are `str.count` (C substring search), and
# only two cheap regular expressions remain (math expressions, list items).

_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "+#"} | {"\n": " ", "\t": " "})


def _words(*groups: str) -> frozenset[str]:
    return frozenset(w for g in groups for w in g.split())


_CODE_SYMBOLS = ("```", "=>", "->", "::", "!=", "==", "&&", "||", "()", "};", "#include", "traceback", "):\n")
_CODE_KEYWORDS = _words(
    "def lambda const void struct impl fn elif printf println async await nullptr namespace typedef",
    "func isinstance kwargs args stdout stderr malloc",
)
_CODE_WORDS = _words(
    "implement implementation debug debugging refactor refactoring algorithm algorithms compile compiler",
    "compiles bug bugs regex python rust golang java javascript typescript c++ c# sql kubernetes",
    "concurrency concurrent thread threads threadsafe deadlock segfault stacktrace api endpoint",
    "unittest pytest",
)
_CODE_PHRASES = ("race condition", "memory leak", "stack trace", "unit test", "data structure", "time complexity")

_MATH_CHARS = "∫∑∏√π∞≤≥≠≈∂∇∈∀∃λθσμ"
_LATEX = ("\\frac", "\\int", "\\sum", "\\sqrt", "\\lim", "\\prod", "\\partial", "\\cdot", "\\infty", "^")
_MATH_EXPR = re.compile(r"[\d)]\s?[-+*/=<>×÷]\s?[\d(]")
_MATH_WORDS = _words(
    "prove proof proofs theorem lemma corollary integral integrate integration derivative derivatives",
    "differentiate eigenvalue eigenvalues eigenvector eigenvectors matrix matrices probability variance",
    "equation equations polynomial logarithm modulo prime primes induction converge converges convergence",
    "series limit topology combinatorics combinatorial optimization optimisation inequality geometry",
    "calculus bayesian irrational infinitely",
)
_MATH_PHRASES = ("expected value", "vector space", "closed form", "if and only if")

_REASONING_WORDS = _words(
    "compare contrast design architect architecture analyze analyse analysis tradeoff tradeoffs evaluate",
    "justify derive diagnose critique plan strategy scalable scalability scale distributed",
    "fault consistency multistep prove",
)
_REASONING_PHRASES = (
    "step by step", "step-by-step", "each step", "every step", "show that", "explain why", "explain how",
    "why does", "why is", "trade-off", "pros and cons", "walk me through", "in detail", "root cause",
    "reason about", "multi-step", "first,", "then,", "finally,",
)
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+\S", re.MULTILINE)

_CONSTRAINT_WORDS = _words("must exactly format json yaml schema ensure guarantee constraint constraints requirement requirements only")
_CONSTRAINT_PHRASES = (
    "at least", "at most", "no more than", "no fewer than", "without using", "do not", "don't",
    "should not", "within ", "under ",
)


def _saturate(count: float, full: float) -> float:
    """count / full, capped at 1: `full` pieces of evidence saturate the feature."""
    return min(1.0, count / full) if count > 0 else 0.0


def _scan_window(text: str) -> str:
    if len(text) <= _SCAN_HEAD + _SCAN_TAIL:
        return text
    return text[:_SCAN_HEAD] + "\n" + text[-_SCAN_TAIL:]


def _length_value(chars: int) -> float:
    if chars <= _LEN_LOW:
        return 0.0
    return min(1.0, math.log(chars / _LEN_LOW) / math.log(_LEN_HIGH / _LEN_LOW))


def _hits(words: Counter[str], vocab: frozenset[str]) -> int:
    """Occurrences of any vocabulary word (a pass over the small vocabulary, not over the text)."""
    return sum(words[w] for w in vocab if w in words)


def _phrases(lower: str, phrases: tuple[str, ...]) -> int:
    return sum(lower.count(p) for p in phrases)


def _code_value(text: str, lower: str, words: Counter[str]) -> float:
    fences = lower.count("```") // 2
    tokens = _phrases(lower, _CODE_SYMBOLS) + _hits(words, _CODE_KEYWORDS) + text.count(";\n") + text.count("{\n")
    cues = _hits(words, _CODE_WORDS) + _phrases(lower, _CODE_PHRASES)
    return min(1.0, 0.5 * min(fences, 1) + _saturate(tokens, 8) * 0.6 + _saturate(cues, 2) * 0.5)


def _math_value(text: str, lower: str, words: Counter[str]) -> float:
    symbols = sum(text.count(c) for c in _MATH_CHARS) + _phrases(text, _LATEX)
    exprs = len(_MATH_EXPR.findall(text))
    cues = _hits(words, _MATH_WORDS) + _phrases(lower, _MATH_PHRASES)
    return min(1.0, _saturate(symbols, 2) * 0.4 + _saturate(exprs, 2) * 0.3 + _saturate(cues, 1) * 0.7)


def _reasoning_value(text: str, lower: str, words: Counter[str]) -> float:
    cues = _hits(words, _REASONING_WORDS) + _phrases(lower, _REASONING_PHRASES)
    items = len(_NUMBERED.findall(text))
    questions = text.count("?")
    return min(
        1.0,
        _saturate(cues, 2) * 0.8 + _saturate(items, 3) * 0.3 + _saturate(max(0, questions - 1), 3) * 0.2,
    )


def _constraints_value(lower: str, words: Counter[str]) -> float:
    return _saturate(_hits(words, _CONSTRAINT_WORDS) + _phrases(lower, _CONSTRAINT_PHRASES), 4)


def _chars_value(chars: int) -> float:
    return min(1.0, math.log1p(chars) / math.log(_LEN_HIGH))


def _turns_value(turns: int) -> float:
    return _saturate(max(0, turns - 1), 10)


def _tools_value(tools: Any) -> float:
    if not tools:
        return 0.0
    n = len(tools) if isinstance(tools, list) else 1
    return min(1.0, 0.5 + 0.1 * n)


# ---------------------------------------------------------------------------------------------
# kNN over labelled examples


# (prompt, difficulty label). Labels: ~0.05 trivial, ~0.15 easy, ~0.85-0.95 hard.
DEFAULT_EXAMPLES: tuple[tuple[str, float], ...] = (
    ("hi", 0.02),
    ("Hello! How are you today?", 0.03),
    ("Thanks, that's all I needed.", 0.03),
    ("Good morning, what's up?", 0.03),
    ("What is the capital of France?", 0.08),
    ("Who wrote Romeo and Juliet?", 0.08),
    ("How many days are in a leap year?", 0.08),
    ("What's the boiling point of water in Celsius?", 0.08),
    ("Translate 'good night' into Spanish.", 0.1),
    ("What does the word 'ephemeral' mean?", 0.1),
    ("Give me a synonym for happy.", 0.08),
    ("Rewrite this sentence to sound more polite: send me the report now.", 0.15),
    ("Fix the spelling in this sentence: I recieved the pacakge yesterday.", 0.12),
    ("Summarize in one sentence: The meeting was moved from Monday to Wednesday.", 0.15),
    ("Make this title shorter: A Comprehensive Guide to Growing Tomatoes at Home", 0.12),
    ("Tell me a fun fact about cats.", 0.08),
    ("What time zone is Tokyo in?", 0.08),
    ("Convert 5 kilometers to miles.", 0.12),
    ("Suggest a name for my goldfish.", 0.08),
    ("Write a short happy birthday message for my coworker.", 0.12),
    ("Prove that there are infinitely many prime numbers.", 0.85),
    ("Prove that the square root of 2 is irrational, then generalise the argument to any non-square integer.", 0.9),
    ("Evaluate the integral of x^2 e^x from 0 to 1 and show every step.", 0.8),
    ("Show that every bounded monotone sequence of real numbers converges.", 0.88),
    ("Find all eigenvalues and eigenvectors of a 3x3 rotation matrix and explain their geometric meaning.", 0.85),
    ("Design a globally distributed rate limiter for an API gateway handling a million requests per second, "
     "covering consistency, failure modes and trade-offs.", 0.95),
    ("Design the architecture of a multi-tenant event streaming platform with exactly-once delivery and "
     "explain how you would shard and replicate it.", 0.95),
    ("Compare Raft and Paxos for a replicated log and analyze which is better for a geo-distributed database.", 0.9),
    ("Implement an LRU cache in Python with O(1) get and put, thread-safe, with unit tests.", 0.8),
    ("Write a Rust async web crawler that respects robots.txt, limits concurrency per host and retries with "
     "backoff.", 0.88),
    ("Implement a lock-free multi-producer single-consumer queue in C++ and argue why it is linearizable.", 0.95),
    ("My Go service deadlocks under load; here is the goroutine dump. Find the root cause and propose a fix.", 0.9),
    ("Debug this Python traceback: KeyError raised inside an asyncio task after a reconnect, only in "
     "production.", 0.82),
    ("Refactor this 500-line Java class into smaller components, preserving behaviour, and explain each step.", 0.85),
    ("Write a SQL query that computes each customer's 30-day rolling revenue and rank within their region, "
     "handling gaps in dates.", 0.75),
    ("Explain step by step how a transformer's attention mechanism scales with sequence length and how "
     "FlashAttention reduces memory traffic.", 0.85),
    ("Analyze the time and space complexity of this dynamic programming solution and optimise it to linear "
     "space.", 0.82),
    ("Derive the closed-form solution of ordinary least squares regression and discuss when it is "
     "numerically unstable.", 0.85),
    ("Plan a migration of a monolithic Rails app to microservices without downtime, including data "
     "migration and rollback strategy.", 0.92),
    ("Given these constraints, schedule 12 exams into 5 rooms so no student has two exams at once; formulate "
     "it as an integer program.", 0.9),
)


def minilm_embed(max_tokens: int = 64) -> Callable[[list[str]], np.ndarray]:
    """An `embed` function for `KnnScorer`: the head of each text through the process-wide MiniLM
    (`cache.embedder.get_embedder`), the one the semantic cache uses: one copy of the model in
    memory, and a text both ask for is encoded once (its memo is keyed by token ids)."""
    from cache.embedder import get_embedder

    return get_embedder().head_embedder(max_tokens)


class KnnScorer:
    """Similarity-weighted mean label of the k nearest labelled examples (cosine on embeddings).

    The examples are embedded once, on first use (or `prepare()`), not per request. Weights are
    the cosine similarities clipped at zero, sharpened by squaring so that one close paraphrase
    outweighs several loosely related examples.
    """

    def __init__(
        self,
        examples: Sequence[tuple[str, float]] = DEFAULT_EXAMPLES,
        embed: Callable[[list[str]], np.ndarray] | None = None,
        k: int = 5,
    ) -> None:
        if not examples:
            raise ValueError("KnnScorer needs at least one labelled example")
        self.examples = [(text, float(label)) for text, label in examples]
        self.labels = np.array([label for _, label in self.examples], dtype=np.float32)
        self.k = max(1, min(k, len(self.examples)))
        self._embed = embed
        self._matrix: np.ndarray | None = None
        self._lock = threading.Lock()

    def _embedder(self) -> Callable[[list[str]], np.ndarray]:
        if self._embed is None:
            self._embed = minilm_embed()
        return self._embed

    @staticmethod
    def _normalise(vecs: np.ndarray) -> np.ndarray:
        vecs = np.asarray(vecs, dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=-1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)

    def prepare(self) -> None:
        """Embed the examples now (startup) instead of on the first request."""
        if self._matrix is None:
            with self._lock:
                if self._matrix is None:
                    self._matrix = self._normalise(self._embedder()([t for t, _ in self.examples]))

    def neighbours(self, text: str) -> list[tuple[str, float, float]]:
        """The k nearest examples as (prompt, label, cosine similarity), nearest first."""
        self.prepare()
        assert self._matrix is not None
        query = self._normalise(self._embedder()([text[:_KNN_CHARS]]))[0]
        sims = self._matrix @ query
        top = np.argpartition(-sims, self.k - 1)[: self.k] if self.k < len(sims) else np.arange(len(sims))
        top = top[np.argsort(-sims[top])]
        return [(self.examples[i][0], float(self.labels[i]), float(sims[i])) for i in top]

    def score(self, text: str) -> float:
        near = self.neighbours(text)
        weights = np.array([max(0.0, s) ** 2 for _, _, s in near], dtype=np.float64)
        labels = np.array([label for _, label, _ in near], dtype=np.float64)
        if weights.sum() <= 1e-9:
            return float(labels.mean())
        return float(np.clip((weights * labels).sum() / weights.sum(), 0.0, 1.0))


# ---------------------------------------------------------------------------------------------


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

    def features(self, body: dict[str, Any]) -> tuple[dict[str, float], str]:
        """Raw feature values in [0, 1] (before weights) and the text kNN should look at."""
        text, last_user, turns = conversation_text(body.get("messages"))
        window = _scan_window(text)
        lower = window.lower()
        words = Counter(lower.translate(_PUNCT).split())
        raw = {
            "length": _length_value(len(text)),
            "code": _code_value(window, lower, words),
            "math": _math_value(window, lower, words),
            "reasoning": _reasoning_value(window, lower, words),
            "constraints": _constraints_value(lower, words),
            "turns": _turns_value(turns),
            "tools": _tools_value(body.get("tools")),
            "chars": _chars_value(len(text)),
        }
        return raw, last_user or text

    def _contributions(self, raw: dict[str, float]) -> tuple[float, dict[str, float]]:
        w = self.weights
        contributions = {name: round(getattr(w, name) * value, 4) for name, value in raw.items()}
        return min(1.0, max(0.0, w.bias + sum(contributions.values()))), contributions

    def _heuristic(self, body: dict[str, Any]) -> tuple[float, dict[str, float], str]:
        raw, knn_text = self.features(body)
        heuristic, contributions = self._contributions(raw)
        return heuristic, contributions, knn_text

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

    def score(self, body: dict[str, Any]) -> Difficulty:
        """Blocking when a kNN scorer is configured (embedding); async code uses `ascore`."""
        heuristic, contributions, knn_text = self._heuristic(body)
        knn = self.knn.score(knn_text) if self.knn is not None and knn_text.strip() else None
        return self._blend(heuristic, contributions, knn)

    def score_heuristic(self, body: dict[str, Any]) -> Difficulty:
        """The cheap path only (no embedding), whatever the configuration."""
        heuristic, contributions, _ = self._heuristic(body)
        return Difficulty(round(heuristic, 4), contributions)

    async def ascore(self, body: dict[str, Any]) -> Difficulty:
        """Heuristics inline; the embedding (if any) in a worker thread so the loop keeps serving."""
        heuristic, contributions, knn_text = self._heuristic(body)
        knn = None
        if self.knn is not None and knn_text.strip():
            knn = await asyncio.to_thread(self.knn.score, knn_text)
        return self._blend(heuristic, contributions, knn)
