"""Semantic cache: answers for paraphrases of a cached question (opt-in per model).

Scope. A semantic hit may only differ from the cached request in the wording of the LAST user
message: the scope is a digest of tenant + route + the whole normalised request with that text
left out (system prompt, tools, every parameter, `user` …), in the tenant's namespace
(`t:<tenant>:s:<sha256>`). Only deterministic requests (see `response.is_deterministic`) and,
unless `SemanticCacheSpec.multi_turn`, single-turn requests (system/developer messages plus one
user message) take part. The last message must be a user message whose content is text only.

Index. Per scope, one blob in the store holds up to `max_entries_per_scope` entries (oldest
dropped first): float32 L2-normalised vectors, the exact-cache key each one answers with, a
guard (digest of the numbers in the text: "12 × 7" never answers "12 × 8", however close the
embeddings) and an expiry. A lookup embeds the query (MiniLM, in a worker thread), takes the
most similar live entry with cosine ≥ threshold and a matching guard, and reads its answer from
the exact cache; the similarity travels on `CachedAnswer.similarity` (for
`x-gateway-cache-similarity`).

Texts longer than the model's window are never embedded: MiniLM would truncate them, and two
long prompts differing only in their tails would look identical.

Writes are read-modify-write of the scope blob: serialised per scope inside one process; across
replicas a concurrent write may drop another's new entry, which only costs a future miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from policies.schema import CacheSpec, SemanticCacheSpec

from .embedder import Embedder, get_embedder
from .response import CachedAnswer, ResponseCache, _digest, is_deterministic, normalise_request, tenant_prefix

__all__ = ["SemanticCache", "SemanticQuery", "query_text"]

INDEX_VERSION = 1
_PREFIX_ROLES = frozenset({"system", "developer"})
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


class _Index(msgspec.Struct, array_like=True):
    v: int
    dim: int
    vecs: bytes
    keys: list[str]
    guards: list[str]
    expires: list[float]


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


def query_text(content: Any) -> str | None:
    """Text of a user message's content; None when it holds anything but text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            texts.append(part["text"])
        return "\n".join(texts)
    return None


def _guard(text: str) -> str:
    numbers = sorted(n.replace(",", "") for n in _NUMBER.findall(text))
    return hashlib.sha256("\x00".join(numbers).encode()).hexdigest()[:16]


class SemanticCache:
    def __init__(
        self,
        responses: ResponseCache,
        embedder: Embedder | None = None,
        *,
        max_entries_per_scope: int = 128,
        max_query_chars: int = 4000,
    ) -> None:
        self.responses = responses
        self.store = responses.backend
        self.embedder = embedder if embedder is not None else get_embedder()
        self.max_entries_per_scope = max_entries_per_scope
        self.max_query_chars = max_query_chars
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
        if index.v != INDEX_VERSION or len(index.vecs) != n * index.dim * 4 or len(index.guards) != n or len(index.expires) != n:
            return None
        return index

    @staticmethod
    def _matrix(index: _Index) -> np.ndarray:
        return np.frombuffer(index.vecs, dtype=np.float32).reshape(len(index.keys), index.dim)

    # ---- read / write

    async def lookup(self, query: SemanticQuery | None, *, max_age: float | None = None) -> CachedAnswer | None:
        """The answer of the most similar cached paraphrase (similarity ≥ threshold), or None."""
        if query is None:
            return None
        answer = await self._lookup(query, max_age)
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    async def _lookup(self, query: SemanticQuery, max_age: float | None) -> CachedAnswer | None:
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
        prefix = tenant_prefix(query.tenant)
        for i in order:
            sim = float(sims[i])
            if sim < query.threshold:
                break
            key = index.keys[i]
            if index.expires[i] <= now or index.guards[i] != query.guard or not key.startswith(prefix + "r:"):
                continue
            answer = await self.responses.read(key, max_age=max_age)
            if answer is not None:
                answer.similarity = sim
                return answer
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
            else:
                matrix = self._matrix(index)
                live = [i for i, exp in enumerate(index.expires) if exp > now and index.keys[i] != exact_key]
                rows = [matrix[i] for i in live]
                keys = [index.keys[i] for i in live]
                guards = [index.guards[i] for i in live]
                expires = [index.expires[i] for i in live]
            rows.append(vector)
            keys.append(exact_key)
            guards.append(query.guard)
            expires.append(now + ttl)
            drop = max(0, len(keys) - self.max_entries_per_scope)
            rows, keys, guards, expires = rows[drop:], keys[drop:], guards[drop:], expires[drop:]
            blob = _index_encoder.encode(
                _Index(
                    INDEX_VERSION,
                    int(vector.shape[0]),
                    np.ascontiguousarray(np.stack(rows), dtype=np.float32).tobytes(),
                    keys,
                    guards,
                    expires,
                )
            )
            await self.store.set(query.scope, blob, max(expires) - now)
        return True
