"""The cache step: exact (and, for chat, semantic) lookup in the tenant's namespace before any
spending; replay of a hit in the caller's protocol; storing a clean answer after the reply.

Only deterministic requests are cached (see `cache/response.py`); keys carry the tenant, the
route and the protocol, so no answer ever crosses tenants, routes or endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from cache.response import CacheDecision, CachedAnswer, CacheStatus, ResponseCache
from policies.schema import CacheSpec
from protocols.api import Api
from protocols.usage import Usage
from protocols.wire import Inbound, Wire

NO_CACHE = CacheDecision(False, False, CacheStatus.BYPASS, "no cache configured")


@dataclass(slots=True)
class Lookup:
    """The cache's verdict for one request: what to do, under which key, and a hit if any."""

    decision: CacheDecision = NO_CACHE
    key: str | None = None
    semantic_query: Any = None
    hit: CachedAnswer | None = None

    @property
    def header(self) -> str:
        return "miss" if self.decision.lookup else "bypass"


def namespace(route: str, api: Api) -> str:
    """Chat keeps its historical namespace; other protocols get their own."""
    return route if api is Api.CHAT else f"{route}|{api}"


class Caching:
    """Exact cache plus optional semantic cache; `Caching.off()` when no cache is configured."""

    def __init__(self, exact: ResponseCache | None, semantic: Any = None) -> None:
        self.exact = exact
        self.semantic = semantic

    @classmethod
    def off(cls) -> Caching:
        return cls(None)

    @property
    def enabled(self) -> bool:
        return self.exact is not None

    async def lookup(self, inbound: Inbound, tenant: str, route: str, spec: CacheSpec,
                     headers: Mapping[str, str]) -> Lookup:
        if self.exact is None:
            return Lookup()
        deterministic = inbound.api is Api.EMBEDDINGS
        decision = self.exact.decision(headers, spec, inbound.body, deterministic=deterministic)
        scope = namespace(route, inbound.api)
        found = Lookup(decision)
        if decision.lookup or decision.store:
            found.key = self.exact.cache_key(tenant, scope, inbound.body, deterministic=deterministic)
        if decision.lookup:
            found.hit = await self.exact.lookup(found.key, max_age=decision.max_age)
        if decision.semantic and self.semantic is not None and inbound.api is Api.CHAT:
            found.semantic_query = self.semantic.prepare(tenant, scope, inbound.body, spec)
            if found.hit is None and decision.lookup and found.semantic_query is not None:
                found.hit = await self.semantic.lookup(found.semantic_query, max_age=decision.max_age)
        return found

    def should_store(self, found: Lookup) -> bool:
        return self.exact is not None and found.decision.store and found.key is not None

    def store_later(self, found: Lookup, body: bytes, usage: Usage, spec: CacheSpec,
                    later: Callable[[Coroutine], None]) -> None:
        """Write the cache off the response path: the caller should not wait for the store."""

        async def store() -> None:
            stored = await self.exact.store(found.key, body, usage, spec.ttl_seconds, spec.max_entry_bytes)
            if stored and self.semantic is not None and found.semantic_query is not None:
                await self.semantic.add(found.semantic_query, found.key, spec.ttl_seconds)

        later(store())


def replay(wire: Wire, inbound: Inbound, hit: CachedAnswer) -> AsyncIterator[bytes]:
    """A cached answer as the caller's stream (framed events and the terminator)."""
    frames = [wire.frame(payload) for payload in wire.replay(hit.body, inbound.include_usage)]
    if wire.done:
        frames.append(wire.done)

    async def events() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame

    return events()
