"""Build the Litestar app from a `Settings` object.

Everything with a lifetime (HTTP pools, providers, the Redis client) is created in the app's
startup hook, inside the serving event loop, and closed on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from litestar import Litestar

from gateway.api.chat import chat_completions
from gateway.api.errors import EXCEPTION_HANDLERS
from gateway.api.meta import healthz, list_models, readyz
from gateway.api.usage import my_usage, tenant_usage
from gateway.auth import KeyRing, hash_key
from gateway.budgets import FailoverBudgets, MemoryBudgets, RedisBudgets, connect_redis
from gateway.pipeline import Gateway, Runtime
from cache.response import ResponseCache
from cache.store import MemoryStore, RedisStore
from gateway.router import Router
from gateway.settings import Settings
from policies.loader import load_policy
from policies.schema import Policy, TenantSpec
from providers.registry import Clients, build_providers

log = logging.getLogger("gateway")
# The SDKs' HTTP clients log every request at INFO: a cost on the hot path and noise in logs.
for _noisy in ("httpx", "httpx2"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def _spawn(app: Litestar, coroutine) -> None:
    """Background work tied to the app's lifetime (kept referenced so it is not collected)."""
    tasks = app.state.setdefault("background", set()) if hasattr(app.state, "setdefault") else set()
    task = asyncio.get_running_loop().create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    app.state.background = tasks


def dev_tenants(settings: Settings) -> dict[str, TenantSpec]:
    return {"dev": TenantSpec(keys=[hash_key(settings.dev_key)])} if settings.dev_key else {}


def build_runtime(policy: Policy, settings: Settings, clients: Clients, previous: Runtime | None = None) -> Runtime:
    providers = build_providers(policy, clients, previous.providers if previous else None)
    return Runtime(
        policy=policy,
        keyring=KeyRing(policy, dev_tenants(settings),
                        (hash_key(settings.admin_key),) if settings.admin_key else ()),
        router=Router(policy, providers),
        providers=providers,
    )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()
    policy = load_policy(settings.policy_path)  # an invalid policy refuses to start

    async def startup(app: Litestar) -> None:
        clients = Clients.create(settings.cache_dir)
        app.state.clients = clients
        redis = connect_redis(settings.redis_url) if settings.redis_url else None
        app.state.redis = redis
        if redis is None:  # the embedded default: all state in this process
            budgets = MemoryBudgets()
            store = MemoryStore()
        else:
            budgets = FailoverBudgets(RedisBudgets(redis, prefix=settings.redis_prefix, close_client=False),
                                      mode=settings.budgets_fail_mode)
            store = RedisStore(redis, prefix=settings.redis_prefix + "cache:")
        cache = ResponseCache(store)
        semantic = None
        if any(m.cache.semantic.enabled for m in policy.models.values()):
            from cache.semantic import SemanticCache

            semantic = SemanticCache(cache)
            _spawn(app, asyncio.to_thread(semantic.embedder.load))  # warm the model off the request path
        app.state.gateway = Gateway(
            build_runtime(policy, settings, clients), budgets=budgets, cache=cache, semantic=semantic
        )
        for provider in app.state.gateway.runtime.providers.values():
            start = getattr(provider, "start", None)  # in-process engines load in the background
            if start is not None:
                start()
        # Everything built so far lives as long as the process: keep it out of GC scans, which
        # otherwise walk hundreds of thousands of SDK and library objects on the hot path.
        gc.collect()
        gc.freeze()

    async def shutdown(app: Litestar) -> None:
        gateway: Gateway | None = getattr(app.state, "gateway", None)
        if gateway is not None:
            for provider in gateway.runtime.providers.values():
                await provider.aclose()
            await gateway.budgets.aclose()
        if getattr(app.state, "clients", None) is not None:
            await app.state.clients.aclose()
        if getattr(app.state, "redis", None) is not None:
            await app.state.redis.aclose()

    async def readiness() -> dict[str, dict]:
        checks: dict[str, dict] = {"policy": {"ok": True, "detail": settings.policy_path}}
        redis = app.state.redis
        if redis is not None:
            # Fail-open keeps serving from a local fallback, so an unreachable Redis must not take
            # the replica out of rotation there: it is reported as degraded instead.
            tolerated = settings.budgets_fail_mode == "open"
            try:
                await redis.ping()
                checks["state_store"] = {"ok": True, "detail": "redis"}
            except Exception as exc:  # any failure means not ready (fail-closed)
                checks["state_store"] = {"ok": tolerated, "degraded": True,
                                         "detail": f"redis: {type(exc).__name__}: {exc}"}
            budgets = app.state.gateway.budgets
            degraded = getattr(budgets, "degraded", False)
            checks["budgets"] = {
                "ok": await budgets.ping(),
                "degraded": degraded,
                "detail": f"fail-{settings.budgets_fail_mode}" + (", serving from a local fallback" if degraded else ""),
            }
        else:
            checks["state_store"] = {"ok": True, "detail": "memory (embedded default)"}
        for name, provider in app.state.gateway.runtime.providers.items():
            if hasattr(provider, "start"):  # an in-process engine: ready once its model is loaded
                health = await provider.health()
                checks[f"engine:{name}"] = {"ok": health.ok, "detail": health.detail}
        semantic = app.state.gateway.semantic
        if semantic is not None:  # informational: lookups wait for the model rather than fail
            loaded = semantic.embedder.loaded
            checks["semantic_cache"] = {"ok": True, "detail": "model loaded" if loaded else "model loading"}
        return checks

    app = Litestar(
        route_handlers=[chat_completions, list_models, healthz, readyz, my_usage, tenant_usage],
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
