"""Semantic cache: answers for paraphrases of a cached question (opt-in per model).

Scope. A semantic hit may only differ from the cached request in the wording of the LAST user
message: the scope is a digest of tenant + route + the whole normalised request with that text
left out (system prompt, tools, every parameter, `user` …), in the tenant's namespace
(`t:<tenant>:s:<sha256>`). Only deterministic requests (see `response.is_deterministic`) and,
unless `SemanticCacheSpec.multi_turn`, single-turn requests (system/developer messages plus one
user message) take part. The last message must be a user message whose content is text only.

Index. Per scope, one blob in the store holds up to `max_entries_per_scope` entries (oldest
dropped first): float32 L2-normalised vectors, the exact-cache key each one answers with, the
text of the last user message, a guard (digest of the numbers in the text, digits and words
alike: "12 × 7" never answers "12 × 8", "five miles" never answers "six miles"; ones aside, which
"a" can stand for, the verifier checks those) and an expiry.
The text is kept for the verifier; it lives in the tenant's namespace with the same TTL as the
answer it indexes.

Lookup. The query is embedded (MiniLM, in a worker thread); live entries with cosine ≥
`threshold` (the policy's one strictness knob) and a matching guard are candidates, most similar
first, and a candidate is served only when `cache.verifier` agrees that the two texts ask the
same thing (closed-class words, negations, antonyms, directions...; cosine alone cannot tell
"good" from "bad for your heart"). At most `max_candidates` are verified per lookup. A hit is a
`SemanticAnswer`: a `CachedAnswer` with `similarity` (for `x-gateway-cache-similarity`) and the
verifier's `verifier` score (for `x-gateway-cache-verifier`); `SemanticAnswer.headers()` gives
both.

Texts longer than the model's window are never embedded: MiniLM would truncate them, and two
long prompts differing only in their tails would look identical.

Writes are read-modify-write of the scope blob: serialised per scope inside one process; across
replicas a concurrent write may drop another's new entry, which only costs a future miss.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from policies.schema import CacheSpec, SemanticCacheSpec

from protocols.text import text_of

from .embedder import Embedder, get_embedder
from .verifier import Verdict, Verifier, get_verifier
from .verifier_text import analyse, numbers_key
from .response import CachedAnswer, ResponseCache, _digest, is_deterministic, normalise_request, tenant_prefix

__all__ = ["SemanticAnswer", "SemanticCache", "SemanticQuery", "query_text"]

INDEX_VERSION = 2  # v2 added the texts (older blobs read as empty: a miss, then rewritten)
_PREFIX_ROLES = frozenset({"system", "developer"})


class _Index(msgspec.Struct, array_like=True):
    v: int
    dim: int
    vecs: bytes
    keys: list[str]
    guards: list[str]
    expires: list[float]
    texts: list[str]


_index_encoder = msgspec.msgpack.Encoder()
_index_decoder = msgspec.msgpack.Decoder(_Index)


@dataclass(slots=True)
class SemanticQuery:
    """One request prepared for the semantic cache; the vector is computed at most once."""

    tenant: str
    scope: str
    text: str
    guard: str
    threshold: float
    vector: np.ndarray | None = None
    embedded: bool = False
    similarity: float | None = field(default=None)  # best similarity seen by the last lookup
    verdict: Verdict | None = field(default=None)  # the verifier's last verdict in the last lookup
    verified: int = 0  # candidates the last lookup sent to the verifier


@dataclass(slots=True)
class SemanticAnswer(CachedAnswer):
    """A semantic hit: the cached answer plus why it was served."""

    verifier: float = 0.0  # the verifier's score (probability the two requests ask the same thing)

    def headers(self) -> dict[str, str]:
        """`x-gateway-cache-similarity` (cosine) and `x-gateway-cache-verifier` (the verifier's score)."""
        return {**CachedAnswer.headers(self), "x-gateway-cache-verifier": f"{self.verifier:.3f}"}


def query_text(content: Any) -> str | None:
    """Text of a user message's content; None when it holds anything but text parts."""
    return text_of(content, strict=True)


def _guard(text: str) -> str:
    return hashlib.sha256(numbers_key(analyse(text)).encode()).hexdigest()[:16]


class SemanticCache:
    def __init__(
        self,
        responses: ResponseCache,
        embedder: Embedder | None = None,
        *,
        verifier: Verifier | None = None,
        max_entries_per_scope: int = 128,
        max_query_chars: int = 4000,
        max_candidates: int = 8,
    ) -> None:
        self.responses = responses
        self.store = responses.backend
        self.embedder = embedder if embedder is not None else get_embedder()
        self.verifier = verifier if verifier is not None else get_verifier()
        self.max_entries_per_scope = max_entries_per_scope
        self.max_query_chars = max_query_chars
        self.max_candidates = max(1, max_candidates)
        self.refused = 0  # candidates above the floor that the verifier refused
        self.hits = 0
        self.misses = 0
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # ---- scope

    def prepare(
        self, tenant: str, route: str, body: Mapping[str, Any], spec: CacheSpec | SemanticCacheSpec
    ) -> SemanticQuery | None:
        """The semantic query for a request, or None when it may not use the semantic cache."""
        sem = spec.semantic if isinstance(spec, CacheSpec) else spec
        if not sem.enabled or not is_deterministic(body)[0]:
            return None
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        last = messages[-1]
        if not isinstance(last, Mapping) or last.get("role") != "user":
            return None
        if not sem.multi_turn:
            for m in messages[:-1]:
                if not isinstance(m, Mapping) or m.get("role") not in _PREFIX_ROLES:
                    return None
        text = query_text(last.get("content"))
        if text is None:
            return None
        text = text.strip()
        if not text or len(text) > self.max_query_chars:
            return None
        scoped = dict(body)
        scoped["messages"] = [*messages[:-1], {**last, "content": None}]
        try:
            normalised = normalise_request(scoped)
        except (TypeError, ValueError):
            return None
        digest = _digest("semantic", tenant, route, normalised)
        if digest is None:
            return None
        return SemanticQuery(
            tenant=tenant,
            scope=f"{tenant_prefix(tenant)}s:{digest}",
            text=text,
            guard=_guard(text),
            threshold=sem.threshold,
        )

    async def _vector(self, query: SemanticQuery) -> np.ndarray | None:
        if not query.embedded:
            query.vector = await asyncio.to_thread(self.embedder.embed_if_fits, query.text)
            query.embedded = True
        return query.vector

    # ---- index blob

    async def _load(self, scope: str) -> _Index | None:
        raw = await self.store.get(scope)
        if raw is None:
            return None
        try:
            index = _index_decoder.decode(raw)
        except (msgspec.DecodeError, TypeError, ValueError):
            return None
        n = len(index.keys)
        if index.v != INDEX_VERSION or len(index.vecs) != n * index.dim * 4:
            return None
        if not len(index.guards) == len(index.expires) == len(index.texts) == n:
            return None
        return index

    @staticmethod
    def _matrix(index: _Index) -> np.ndarray:
        return np.frombuffer(index.vecs, dtype=np.float32).reshape(len(index.keys), index.dim)

    # ---- read / write

    async def lookup(self, query: SemanticQuery | None, *, max_age: float | None = None) -> SemanticAnswer | None:
        """The answer of the most similar cached request that is above the similarity floor and
        that the verifier agrees asks the same thing, or None."""
        if query is None:
            return None
        answer = await self._lookup(query, max_age)
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    async def _lookup(self, query: SemanticQuery, max_age: float | None) -> SemanticAnswer | None:
        index = await self._load(query.scope)
        if index is None or not index.keys:
            return None
        vector = await self._vector(query)
        if vector is None or vector.shape[0] != index.dim:
            return None
        sims = self._matrix(index) @ vector
        now = time.time()
        order = np.argsort(-sims)
        query.similarity = float(sims[order[0]])
        query.verdict, query.verified = None, 0
        prefix = tenant_prefix(query.tenant)
        for i in order:
            sim = float(sims[i])
            if sim < query.threshold or query.verified >= self.max_candidates:
                break
            key = index.keys[i]
            if index.expires[i] <= now or index.guards[i] != query.guard or not key.startswith(prefix + "r:"):
                continue
            query.verified += 1
            query.verdict = self.verifier.check(index.texts[i], query.text, sim)
            if not query.verdict.agrees:
                self.refused += 1
                continue
            answer = await self.responses.read(key, max_age=max_age)
            if answer is not None:
                fields = {f.name: getattr(answer, f.name) for f in dataclasses.fields(CachedAnswer)}
                fields["similarity"] = sim
                return SemanticAnswer(**fields, verifier=query.verdict.score)
        return None

    async def add(self, query: SemanticQuery | None, exact_key: str | None, ttl: float) -> bool:
        """Index `exact_key` (already stored in the exact cache) under the query's vector."""
        if query is None or exact_key is None or not (ttl > 0):
            return False
        if not exact_key.startswith(tenant_prefix(query.tenant) + "r:"):
            raise ValueError("exact_key belongs to another tenant")
        vector = await self._vector(query)
        if vector is None:
            return False
        lock = self._locks.get(query.scope)
        if lock is None:
            lock = self._locks[query.scope] = asyncio.Lock()
        async with lock:
            now = time.time()
            index = await self._load(query.scope)
            if index is None or index.dim != vector.shape[0]:
                rows: list[np.ndarray] = []
                keys: list[str] = []
                guards: list[str] = []
                expires: list[float] = []
                texts: list[str] = []
            else:
                matrix = self._matrix(index)
                live = [i for i, exp in enumerate(index.expires) if exp > now and index.keys[i] != exact_key]
                rows = [matrix[i] for i in live]
                keys = [index.keys[i] for i in live]
                guards = [index.guards[i] for i in live]
                expires = [index.expires[i] for i in live]
                texts = [index.texts[i] for i in live]
            rows.append(vector)
            keys.append(exact_key)
            guards.append(query.guard)
            expires.append(now + ttl)
            texts.append(query.text)
            drop = max(0, len(keys) - self.max_entries_per_scope)
            rows, keys, guards, expires, texts = rows[drop:], keys[drop:], guards[drop:], expires[drop:], texts[drop:]
            blob = _index_encoder.encode(
                _Index(
                    INDEX_VERSION,
                    int(vector.shape[0]),
                    np.ascontiguousarray(np.stack(rows), dtype=np.float32).tobytes(),
                    keys,
                    guards,
                    expires,
                    texts,
                )
            )
            await self.store.set(query.scope, blob, max(expires) - now)
        return True
