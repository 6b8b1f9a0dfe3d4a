"""Difficulty scorer: heuristics order easy below hard and explain themselves; weights matter; the
kNN path (real offline MiniLM) separates paraphrases it has never seen."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gateway.routing.features import ask_of
from gateway.routing.scorer import (
    DEFAULT_EXAMPLES,
    FEATURES,
    Difficulty,
    DifficultyScorer,
    DifficultyWeights,
    KnnScorer,
    minilm_embed,
)

EASY = [
    "hi!",
    "What is the capital of Italy?",
    "Translate 'thank you very much' into German.",
    "Make this sentence friendlier: close the door.",
    "Who painted the Mona Lisa?",
    "Tell me a joke about dogs.",
    "What's 2+2?",
    "Give me three names for a black cat.",
]
HARD = [
    "Prove that every continuous function on a closed interval [a,b] is bounded and attains its maximum.",
    "Design a multi-region, highly available key-value store with tunable consistency. Explain the "
    "replication protocol, failure handling and trade-offs step by step.",
    "```python\nimport asyncio\nasync def worker(q):\n    while True:\n        item = await q.get()\n"
    "        process(item)\n```\nThis hangs after a few minutes under load. Debug it, find the root cause, "
    "and rewrite it so it handles cancellation and backpressure. Include unit tests.",
    "Compute the integral ∫ x^2 sin(x) dx and then prove the result by differentiation. Show each step.",
    "Analyze the trade-offs between B-trees and LSM trees for a write-heavy workload, compare their read "
    "and write amplification, and recommend a design.",
    "Implement a thread-safe LRU cache in Java with O(1) operations. It must support TTL expiry, must be "
    "generic, and the output must be a single file. Explain why your design is correct.",
    "Let f(x) = x^3 - 3x + 1. Find all real roots, prove there are exactly three, and derive bounds for each.",
]


def chat(text: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], **extra}


def test_easy_scores_below_hard():
    scorer = DifficultyScorer()
    easy = [scorer.score(*ask_of(chat(p))).score for p in EASY]
    hard = [scorer.score(*ask_of(chat(p))).score for p in HARD]
    assert max(easy) < 0.2, easy
    assert min(hard) > 0.4, hard
    assert max(easy) < min(hard)
    assert all(0.0 <= s <= 1.0 for s in easy + hard)


@pytest.mark.parametrize(
    ("prompt", "dominant"),
    [
        (HARD[2], "code"),
        ("Prove that the sum of the first n odd numbers equals n^2 using induction.", "math"),
        ("Compare microservices and a modular monolith for our team; analyze the trade-offs and design a plan.",
         "reasoning"),
    ],
)
def test_features_explain_the_score(prompt, dominant):
    d = DifficultyScorer().score(*ask_of(chat(prompt)))
    assert set(d.features) == set(FEATURES)
    assert max(d.features, key=d.features.get) == dominant
    # Clipped-linear: below 1, the contributions (plus the zero bias) ARE the score.
    assert d.score < 1.0
    assert d.score == pytest.approx(sum(d.features.values()), abs=1e-3)
    header = d.header()
    assert header.startswith(f"{d.score:.2f}; ")
    assert f"{dominant}={d.features[dominant]:.2f}" in header


def test_header_format():
    d = Difficulty(0.7234, {"length": 0.1, "code": 0.354})
    assert d.header() == "0.72; length=0.10 code=0.35"


def test_weights_change_outcomes():
    prompt = chat(HARD[2])
    default = DifficultyScorer().score(*ask_of(prompt))
    no_code = DifficultyScorer(DifficultyWeights(code=0.0)).score(*ask_of(prompt))
    assert no_code.features["code"] == 0.0
    assert no_code.score < default.score - 0.2
    biased = DifficultyScorer(DifficultyWeights(bias=0.3)).score(*ask_of(chat("hello")))
    assert biased.score == pytest.approx(0.3)
    heavy_len = DifficultyWeights(length=1.0)
    long_doc = chat("Summarize this. " + "The quarterly figures were in line with expectations. " * 200)
    heavy = DifficultyScorer(heavy_len).score(*ask_of(long_doc)).score
    assert heavy > DifficultyScorer().score(*ask_of(long_doc)).score + 0.3
    assert DifficultyScorer(DifficultyWeights(bias=5.0)).score(*ask_of(chat("hi"))).score == 1.0  # clipped


def test_turns_tools_and_content_parts():
    scorer = DifficultyScorer()
    one = scorer.score(*ask_of(chat("What's the weather in Paris?")))
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": {}}} for i in range(3)]
    with_tools = scorer.score(*ask_of(chat("What's the weather in Paris?", tools=tools)))
    assert with_tools.features["tools"] > 0 and with_tools.score > one.score
    long_chat = {"messages": [{"role": "system", "content": "You are helpful."}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "ok"} for i in range(11)
    ]}
    assert scorer.score(*ask_of(long_chat)).features["turns"] == pytest.approx(DifficultyWeights().turns)
    parts = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Prove the theorem step by step."},
        {"type": "image_url", "image_url": {"url": "data:..."}},
    ]}]}
    assert scorer.score(*ask_of(parts)).features["math"] > 0
    assert scorer.score(*ask_of({"messages": []})).score == 0.0
    assert scorer.score(*ask_of({"messages": [None, {"role": "user", "content": None}]})).score == 0.0


def test_huge_prompt_is_bounded():
    scorer = DifficultyScorer()
    big = chat("def f(x):\n    return x + 1\n" * 40_000)  # ~1 MB
    scorer.score(*ask_of(big))
    started = time.perf_counter()
    d = scorer.score(*ask_of(big))
    assert time.perf_counter() - started < 0.05
    assert d.features["length"] == pytest.approx(DifficultyWeights().length)
    assert d.features["code"] >= 0.25  # unfenced code dump: code tokens alone


def _bag_of_words(texts: list[str]) -> np.ndarray:
    vocab = ["prove", "design", "hello", "capital", "theorem", "system"]
    return np.array([[t.lower().count(w) for w in vocab] for t in texts], dtype=np.float32) + 1e-3


def test_knn_weighting_with_a_toy_embedder():
    calls: list[int] = []

    def embed(texts):
        calls.append(len(texts))
        return _bag_of_words(texts)

    knn = KnnScorer([("hello there", 0.0), ("capital of spain", 0.1), ("prove the theorem", 1.0),
                     ("design the system", 0.9)], embed, k=2)
    assert knn.score("hello hello") < 0.1
    assert knn.score("prove this theorem please") > 0.9
    near = knn.neighbours("design a system")
    assert near[0][0] == "design the system" and near[0][2] > near[1][2]
    assert calls[0] == 4 and all(n == 1 for n in calls[1:]), "examples are embedded once"


@pytest.fixture(scope="module")
def knn():
    scorer = KnnScorer(DEFAULT_EXAMPLES, minilm_embed(), k=5)
    scorer.prepare()
    return scorer


# Paraphrases that are NOT in DEFAULT_EXAMPLES and share few keywords with them.
KNN_EASY = [
    "Hey, how's it going?",
    "Which city is the capital of Germany?",
    "Say 'see you tomorrow' in French.",
    "Please make this line sound nicer: give me your notes.",
    "Name a color that rhymes with bed.",
]
KNN_HARD = [
    "Show rigorously that sqrt(3) cannot be written as a ratio of integers.",
    "Architect a fault-tolerant payment processing system spanning three data centers.",
    "Write a concurrent job scheduler in Go with priorities, cancellation and persistence, plus tests.",
    "Our Node.js server leaks memory slowly over days; walk through how you'd find and fix the cause.",
    "Establish that the harmonic series diverges and estimate its partial sums.",
]


def test_knn_embeds_with_the_process_wide_minilm_and_matches_sentence_transformers(knn):
    from sentence_transformers import SentenceTransformer

    from cache.embedder import default_model_path, get_embedder

    texts = ["Which city is the capital of Germany?", "Prove that the harmonic series diverges."]
    before = get_embedder().forward_texts
    ours = knn._embedder()(texts)
    assert get_embedder().forward_texts > before  # one MiniLM in the process: the semantic cache's
    ref = SentenceTransformer(str(default_model_path()), device="cpu").encode(
        texts, convert_to_numpy=True, normalize_embeddings=True)  # an fp32 reference copy
    assert ours.shape == (2, 384)
    assert np.allclose((ours * ref).sum(axis=1), 1.0, atol=1e-3)


def test_knn_separates_unseen_paraphrases(knn):
    assert not set(KNN_EASY + KNN_HARD) & {t for t, _ in DEFAULT_EXAMPLES}
    easy = [knn.score(p) for p in KNN_EASY]
    hard = [knn.score(p) for p in KNN_HARD]
    assert max(easy) < 0.3, easy
    assert min(hard) > 0.7, hard


async def test_blended_score_with_knn(knn):
    scorer = DifficultyScorer(knn=knn, knn_weight=0.5)
    prompt = chat("Architect a fault-tolerant payment processing system spanning three data centers.")
    d = scorer.score(*ask_of(prompt))
    assert {"heuristic", "knn"} <= set(d.features)
    assert d.score == pytest.approx(0.5 * d.features["heuristic"] + 0.5 * d.features["knn"], abs=1e-3)
    assert d.features["knn"] > 0.7
    assert d.score > DifficultyScorer().score(*ask_of(prompt)).score  # kNN lifts what keywords under-rate
    a = await scorer.ascore(*ask_of(prompt))
    assert a.score == pytest.approx(d.score, abs=1e-4)
    assert "knn=" in d.header()
    easy = scorer.score(*ask_of(chat("Which city is the capital of Germany?")))
    assert easy.score < 0.15
    # knn_weight=0: kNN is reported but does not move the score.
    only_h = DifficultyScorer(knn=knn, knn_weight=0.0).score(*ask_of(prompt))
    assert only_h.score == pytest.approx(only_h.features["heuristic"])
