"""Build the Litestar app from a `Settings` object.

Everything with a lifetime (HTTP pools, providers, the Redis client) is created in the app's
startup hook, inside the serving event loop, and closed on shutdown.
"""

from __future__ import annotations

import gc
import logging

import redis.asyncio as aioredis
from litestar import Litestar

from gateway.api.chat import chat_completions
from gateway.api.errors import EXCEPTION_HANDLERS
from gateway.api.meta import healthz, list_models, readyz
from gateway.auth import KeyRing, hash_key
from gateway.pipeline import Gateway, Runtime
from gateway.router import Router
from gateway.settings import Settings
from policies.loader import load_policy
from policies.schema import Policy, TenantSpec
from providers.registry import Clients, build_providers

log = logging.getLogger("gateway")
# The SDKs' HTTP clients log every request at INFO: a cost on the hot path and noise in logs.
for _noisy in ("httpx", "httpx2"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def dev_tenants(settings: Settings) -> dict[str, TenantSpec]:
    return {"dev": TenantSpec(keys=[hash_key(settings.dev_key)])} if settings.dev_key else {}


def build_runtime(policy: Policy, settings: Settings, clients: Clients, previous: Runtime | None = None) -> Runtime:
    providers = build_providers(policy, clients, previous.providers if previous else None)
    return Runtime(
        policy=policy,
        keyring=KeyRing(policy, dev_tenants(settings)),
        router=Router(policy, providers),
        providers=providers,
    )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()
    policy = load_policy(settings.policy_path)  # an invalid policy refuses to start

    async def startup(app: Litestar) -> None:
        clients = Clients.create()
        app.state.clients = clients
        app.state.redis = aioredis.from_url(settings.redis_url) if settings.redis_url else None
        app.state.gateway = Gateway(build_runtime(policy, settings, clients))
        # Everything built so far lives as long as the process: keep it out of GC scans, which
        # otherwise walk hundreds of thousands of SDK and library objects on the hot path.
        gc.collect()
        gc.freeze()

    async def shutdown(app: Litestar) -> None:
        gateway: Gateway | None = getattr(app.state, "gateway", None)
        if gateway is not None:
            for provider in gateway.runtime.providers.values():
                await provider.aclose()
        if getattr(app.state, "clients", None) is not None:
            await app.state.clients.aclose()
        if getattr(app.state, "redis", None) is not None:
            await app.state.redis.aclose()

    async def readiness() -> dict[str, dict]:
        checks: dict[str, dict] = {"policy": {"ok": True, "detail": settings.policy_path}}
        redis = app.state.redis
        if redis is not None:
            try:
                await redis.ping()
                checks["state_store"] = {"ok": True, "detail": "redis"}
            except Exception as exc:  # any failure means not ready
                checks["state_store"] = {"ok": False, "detail": f"redis: {type(exc).__name__}: {exc}"}
        else:
            checks["state_store"] = {"ok": True, "detail": "memory (embedded default)"}
        return checks

    app = Litestar(
        route_handlers=[chat_completions, list_models, healthz, readyz],
        on_startup=[startup],
        on_shutdown=[shutdown],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.body_ceiling_bytes,
        openapi_config=None,
        debug=False,
    )
    app.state.settings = settings
    app.state.readiness = readiness
    return app


def app_from_env() -> Litestar:
    """Factory for server workers: settings arrive as JSON in HYBRID_GATEWAY_SETTINGS."""
    return create_app(Settings.from_env())
