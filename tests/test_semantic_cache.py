"""Semantic cache with its verifier, and the shared embedder's memo (real offline MiniLM)."""

from __future__ import annotations

import json
import os
import threading

import msgspec
import pytest

from cache.embedder import Embedder, get_embedder
from cache.response import ResponseCache
from cache.semantic import SemanticAnswer, SemanticCache
from cache.store import MemoryStore
from policies.schema import CacheSpec, SemanticCacheSpec
from protocols.usage import Usage

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEM = CacheSpec(semantic=SemanticCacheSpec(enabled=True))  # the shipped default threshold
ANSWER = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "answer"},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()


@pytest.fixture(scope="module")
def embedder():
    e = Embedder()
    e.load()
    return e


def body(text: str) -> dict:
    return {"model": "m", "temperature": 0,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}


async def seed(sc: SemanticCache, text: str, spec: CacheSpec = SEM, tenant: str = "t") -> None:
    key = sc.responses.cache_key(tenant, "chat", body(text))
    assert await sc.responses.store(key, ANSWER, Usage(3, 1), 60, 100_000)
    assert await sc.add(sc.prepare(tenant, "chat", body(text), spec), key, 60)


async def test_near_miss_above_the_floor_is_refused_and_paraphrase_served_with_its_scores(embedder):
    sc = SemanticCache(ResponseCache(MemoryStore()), embedder)
    await seed(sc, "Is coffee bad for your heart?")
    query = sc.prepare("t", "chat", body("Is coffee good for your heart?"), SEM)
    assert await sc.lookup(query) is None
    assert query.similarity >= SemanticCacheSpec().threshold, "cosine alone would have served it"
    assert query.verdict.reason == "antonym" and query.verified == 1 and sc.refused == 1

    hit = await sc.lookup(sc.prepare("t", "chat", body("Is coffee bad for the heart?"), SEM))
    assert isinstance(hit, SemanticAnswer) and hit.body == ANSWER
    assert hit.verifier == 1.0 and hit.similarity >= SemanticCacheSpec().threshold
    headers = hit.headers()
    assert float(headers["x-gateway-cache-similarity"]) == pytest.approx(hit.similarity, abs=1e-4)
    assert headers["x-gateway-cache-verifier"] == "1.000"


@pytest.mark.parametrize(("cached", "query", "rule"), [
    ("What's 9 minus 3?", "What's 3 minus 9?", "order"),
    ("Convert my Spotify playlist into an Apple Music one.", "Convert my Apple Music playlist into a Spotify one.",
     "order"),
    ("Write an essay in favour of a four-day week.", "Write an essay against a four-day week.", "antonym"),
    ("Who painted The Starry Night?", "When was The Starry Night painted?", "question"),
])
async def test_same_words_in_another_order_stance_or_question_are_refused_above_the_floor(embedder, cached, query,
                                                                                          rule):
    sc = SemanticCache(ResponseCache(MemoryStore()), embedder)
    await seed(sc, cached)
    q = sc.prepare("t", "chat", body(query), SEM)
    assert await sc.lookup(q) is None
    assert q.similarity >= SemanticCacheSpec().threshold, "cosine alone would have served it"
    assert q.verdict.reason == rule


async def test_verified_candidates_per_lookup_are_bounded(embedder):
    loose = CacheSpec(semantic=SemanticCacheSpec(enabled=True, threshold=0.3))
    sc = SemanticCache(ResponseCache(MemoryStore()), embedder, max_candidates=2)
    for language in ("Spanish", "French", "German", "Dutch", "Swedish"):
        await seed(sc, f"Translate 'good morning' into {language}.", loose)
    query = sc.prepare("t", "chat", body("Translate 'good morning' into Italian."), loose)
    assert await sc.lookup(query) is None
    assert query.verified == 2, "at most max_candidates reach the verifier"
    wide = SemanticCache(sc.responses, embedder, max_candidates=8)
    query = wide.prepare("t", "chat", body("Translate 'good morning' into Italian."), loose)
    assert await wide.lookup(query) is None and query.verified == 5


async def test_index_of_the_previous_version_is_a_miss_then_rewritten(embedder):
    store = MemoryStore()
    sc = SemanticCache(ResponseCache(store), embedder)
    query = sc.prepare("t", "chat", body("Who wrote Hamlet?"), SEM)
    vector = embedder.embed_if_fits("Who wrote Hamlet?")
    key = sc.responses.cache_key("t", "chat", body("Who wrote Hamlet?"))
    await sc.responses.store(key, ANSWER, Usage(3, 1), 60, 100_000)
    v1 = msgspec.msgpack.encode([1, 384, vector.tobytes(), [key], [query.guard], [9e18]])  # no texts
    await store.set(query.scope, v1, 60)
    assert await sc.lookup(query) is None
    assert await sc.add(query, key, 60)
    assert await sc.lookup(sc.prepare("t", "chat", body("Who wrote Hamlet?"), SEM)) is not None


def test_memo_serves_the_same_text_to_both_callers_once_and_concurrent_callers_share_it():
    e = Embedder(memo_size=2)
    e.load()
    text = "How do I reverse a list in Python?"
    full = e.embed_if_fits(text)  # the semantic cache's call
    head = e.embed_query(text)  # the difficulty scorer's call (64 word pieces: the same ids here)
    assert e.forward_texts == 1
    assert head.shape == (1, full.shape[0]) and (head[0] == full).all()
    head[0, 0] = 42.0  # callers get their own copies
    assert e.embed_query(text)[0, 0] != 42.0 and e.forward_texts == 1
    long_text = " ".join(["word"] * 100)  # 64-piece head and full text differ: two forward passes
    e.embed_if_fits(long_text)
    e.embed_query(long_text)
    assert e.forward_texts == 3
    e.embed_query(text)  # evicted by the two long entries (memo_size=2)
    assert e.forward_texts == 4

    # concurrent callers asking for the same new text share one forward pass
    barrier = threading.Barrier(4)
    results = []

    def ask() -> None:
        barrier.wait(timeout=30)
        results.append(e.embed_if_fits("A sentence no thread has embedded before."))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and e.forward_texts == 5
    assert all((r == results[0]).all() for r in results)


def test_one_embedder_per_process():
    assert get_embedder() is get_embedder()
    sc = SemanticCache(ResponseCache(MemoryStore()))
    assert sc.embedder is get_embedder()


def test_query_forward_pass_uses_one_intra_op_thread_and_restores_the_callers():
    import numpy as np
    import torch

    from cache.embedder import _intra_op_threads

    before = torch.get_num_threads()
    with _intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with _intra_op_threads(None):
        assert torch.get_num_threads() == before

    e = Embedder(memo_size=0)
    assert e.threads == 1  # the request-path default
    text = "How do I reverse a list in Python?"
    seen: list[int] = []
    worker = threading.Thread(target=lambda: (torch.set_num_threads(2), e.embed_if_fits(text),
                                              seen.append(torch.get_num_threads())))
    worker.start()
    worker.join(timeout=60)
    assert seen == [2]  # the worker thread's own setting is back after the forward pass
    one = e.embed_if_fits(text)
    e.threads = None  # torch's default: the same vector
    assert float(np.dot(one, e.embed_if_fits(text))) > 0.9999
