"""Build one provider per policy target from a table of factories (no if/elif ladder).

All providers share two pooled HTTP clients owned here: an aiohttp session for byte
pass-through and an aiohttp-backed `httpx2` client (what the official SDKs are built on) for the SDKs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import httpx2
from openai import DefaultAioHttpClient

from policies.schema import Policy, TargetSpec
from providers.base import Provider


@dataclass(slots=True)
class Clients:
    """What providers share: two pooled HTTP clients, and where to keep built artefacts."""

    session: aiohttp.ClientSession
    http: httpx2.AsyncClient
    cache_dir: str = ""

    @classmethod
    def create(cls, cache_dir: str = "") -> "Clients":
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
        return cls(
            session=aiohttp.ClientSession(connector=connector, auto_decompress=True),
            http=DefaultAioHttpClient(timeout=httpx2.Timeout(600, connect=5), limits=httpx2.Limits(max_connections=1000)),
            cache_dir=cache_dir,
        )

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.session.close()


Factory = Callable[[str, TargetSpec, Clients, Policy], Provider]


def _openai(name: str, spec: TargetSpec, clients: Clients, policy: Policy) -> Provider:
    from providers.openai import OpenAIProvider

    return OpenAIProvider(name, spec, clients.http, session=clients.session)


def _anthropic(name: str, spec: TargetSpec, clients: Clients, policy: Policy) -> Provider:
    from providers.anthropic import AnthropicProvider

    return AnthropicProvider(name, spec, clients.http, session=clients.session)


def _selfhost(name: str, spec: TargetSpec, clients: Clients, policy: Policy) -> Provider:
    if spec.embedded is not None:
        from providers.embedded import EmbeddedEngineProvider

        return EmbeddedEngineProvider(name, spec, clients.cache_dir)
    from providers.selfhost import SelfHostProvider

    return SelfHostProvider(name, spec, clients.session, policy.balancing)


def _local_embeddings(name: str, spec: TargetSpec, clients: Clients, policy: Policy) -> Provider:
    from providers.local_embeddings import LocalEmbeddingsProvider

    return LocalEmbeddingsProvider(name, spec)


FACTORIES: dict[str, Factory] = {
    "openai": _openai,
    "azure": _openai,
    "anthropic": _anthropic,
    "selfhost": _selfhost,
    "local_embeddings": _local_embeddings,
}


def build_providers(policy: Policy, clients: Clients, reuse: dict[str, Provider] | None = None) -> dict[str, Provider]:
    """One provider per target; providers whose spec did not change are reused across reloads."""
    built: dict[str, Provider] = {}
    for name, spec in policy.targets.items():
        old = (reuse or {}).get(name)
        if old is not None and getattr(old, "spec", None) == spec and getattr(old, "balancing", None) in (
            None, policy.balancing
        ):
            built[name] = old
        else:
            built[name] = FACTORIES[spec.provider](name, spec, clients, policy)
    return built
