"""The legacy kNN scorer: similarity-weighted labels of the nearest example prompts (offline MiniLM).

It catches what keywords miss ("why do ships float?" is easy, "is P equal to NP?" is not); a
policy with `difficulty: {knn: true}` blends it with the heuristic (`scorer.py`). The embedding
costs a few ms on a multi-core CPU, so async callers run it in a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

# kNN (and learned-model) input: the head of the latest user turn. Transformer cost on a CPU grows
# with the number of word pieces, and the kind of task is almost always stated in the first
# sentences, so the text is cut to ~400 characters here and to 64 word pieces by `minilm_embed`
# (p99 within 15 ms on 2 cores).
_KNN_CHARS = 400


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
