"""Build the Litestar app from a `Settings` object.

Everything with a lifetime (HTTP pools, providers, the Redis client) is created in the app's
startup hook, inside the serving event loop, and closed on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from litestar import Litestar

from gateway.api.body import body_guard
from gateway.api.inbound import INFERENCE_ROUTES
from gateway.api.messages import count_tokens
from gateway.api.errors import EXCEPTION_HANDLERS
from gateway.api.meta import healthz, list_models, metrics, readyz, retrieve_model
from gateway.caching import Caching
from gateway.api.responses import RESPONSES_ROUTES
from gateway.responses_store import ResponseStore
from protocols import openai_responses
from protocols.api import Api
from protocols import anthropic_messages, openai_chat, openai_completions, openai_embeddings
from gateway.api.admin import breakers_view, reload_policy
from gateway.api.autoscale import autoscale_view
from gateway.autoscale import AutoscaleSampler
from gateway.api.usage import my_usage, tenant_usage
from gateway.api.feedback import FEEDBACK_ROUTES
from gateway.routing.decisions import MemoryDecisionStore, RedisDecisionStore
from gateway.routing.learned import warm_scorer
from gateway.routing.sticky import Stickiness
from gateway.auth import KeyRing, hash_key
from gateway.breaker import BreakerConfig, BreakerGate, Breakers, MemoryBreakerStore, RedisBreakerStore
from gateway.budgets import FailoverBudgets, MemoryBudgets, RedisBudgets
from state import RedisConfig, SharedState
from gateway.executor import Executor
from gateway.telemetry import Telemetry
from gateway.pipeline import Gateway, Runtime
from gateway.reload import PolicyWatcher
from cache.response import ResponseCache
from cache.store import MemoryStore, RedisStore
from gateway.router import Router
from gateway.settings import Settings
from policies.loader import load_policy
from policies.schema import Policy, TenantSpec
from providers.embedded import EmbeddedEngineProvider
from providers.registry import Clients, build_providers

log = logging.getLogger("gateway")
# The SDKs' HTTP clients log every request at INFO: a cost on the hot path and noise in logs.
for _noisy in ("httpx", "httpx2"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


# Every protocol callers may speak, and its wire (protocols/).
WIRES = {wire.api: wire for wire in (openai_chat.WIRE, openai_completions.WIRE, openai_embeddings.WIRE,
                                     anthropic_messages.WIRE)}

WIRES[openai_responses.WIRE.api] = openai_responses.WIRE  # POST /v1/responses

def _spawn(app: Litestar, coroutine) -> None:
    """Background work tied to the app's lifetime (kept referenced so it is not collected)."""
    task = asyncio.get_running_loop().create_task(coroutine)
    app.state.background.add(task)
    task.add_done_callback(app.state.background.discard)


def _import_model_libraries(policy: Policy) -> None:
    """Import transformers and sentence-transformers here, once, before any loader thread starts.

    The engine, the embeddings target, the semantic cache and the difficulty scorer each load a
    model in a worker thread; two threads importing transformers' lazy modules at the same time can
    see them half initialised ("cannot import name 'AutoModelForCausalLM'"). Only policies that
    use such a model pay the import at startup.
    """
    targets = policy.targets.values()
    if not (any(t.embedded is not None or t.provider == "local_embeddings" for t in targets)
            or any(m.cache.semantic.enabled for m in policy.models.values())):
        return
    import sentence_transformers  # noqa: F401  (imports transformers' model classes too)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def _start_providers(runtime: Runtime) -> None:
    knn = runtime.router.scorer.knn
    if knn is not None:  # embed the labelled examples now, not on the first `auto` request
        asyncio.get_running_loop().run_in_executor(None, knn.prepare)
    for provider in runtime.providers.values():
        start = getattr(provider, "start", None)  # in-process engines load in the background
        if start is not None:
            start()


async def _close_later(providers: list, grace: float) -> None:
    """Close providers a reload retired, once requests that still hold them can have finished."""
    await asyncio.sleep(grace)
    for provider in providers:
        try:
            await provider.aclose()
        except Exception:
            log.exception("closing a retired provider failed")


def breaker_config(policy: Policy) -> BreakerConfig:
    b = policy.breakers
    return BreakerConfig(window_seconds=b.window_seconds, min_calls=b.min_calls, failure_rate=b.failure_rate,
                         slow_call_seconds=b.slow_call_seconds, base_cooldown=b.base_cooldown,
                         max_cooldown=b.max_cooldown, half_open_probes=b.half_open_probes)


async def _publish_state(gateway: Gateway, breakers: Breakers, telemetry: Telemetry, interval: float = 5.0) -> None:
    """Breaker states and budget remaining per tenant and window, as gauges: read periodically,
    off the request path."""
    while True:
        budgets = gateway.budgets
        if isinstance(budgets, FailoverBudgets):
            telemetry.state_layer(not budgets.degraded, budgets.pending_settles, budgets.overspend)
        try:
            for key, state in (await breakers.snapshot()).items():
                telemetry.breaker_state(key, state["state"])
        except Exception:  # the store may be down; readiness reports that
            pass
        runtime = gateway.runtime
        for tenant in runtime.keyring.tenants():
            try:
                usage = await gateway.budgets.usage(tenant, runtime.keyring.tenant_spec(tenant))
            except Exception:  # the store may be down; readiness reports that
                break
            for window, numbers in usage.get("windows", {}).items():
                if numbers.get("remaining") is not None:
                    telemetry.budget_remaining(tenant, window, float(numbers["remaining"]))
        await asyncio.sleep(interval)


async def _store_readiness(health, fail_mode: str) -> dict[str, dict]:
    """What requests get from the shared store, as readiness reports it.

    Bounded probes (every master of a Cluster; a hung store must not hang the check): when two in
    a row go unanswered the outage opens for requests too (they then fail fast instead of each
    timing out), so readiness and requests agree (`StoreHealth.check`). It never closes an
    outage: only the background recovery loop does, so one lucky answer cannot flip the store up
    and down. Fail-closed serves nothing while the store is down (not ready); fail-open serves
    from a local share (ready, degraded).
    """
    await health.check()
    down = health.down
    tolerated = fail_mode == "open"
    detail = "redis: no answer" if down else "redis"
    budgets = f"fail-{fail_mode}" + (", serving from a local fallback" if down and tolerated else
                                     ", refusing requests (503)" if down else "")
    return {"state_store": {"ok": not down or tolerated, "degraded": down, "detail": detail},
            "budgets": {"ok": not down or tolerated, "degraded": down, "detail": budgets}}


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


def _shared_state(settings: Settings) -> SharedState | None:
    """The one Redis client of this process (state/), or None for the embedded default."""
    if not settings.redis_url:
        return None
    config = RedisConfig(url=settings.redis_url, timeout=settings.redis_timeout,
                         pool_size=settings.redis_pool_size, pool_wait=settings.redis_pool_wait)
    return SharedState.connect(config, settings.redis_prefix)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()
    policy = load_policy(settings.policy_path)  # an invalid policy refuses to start

    async def startup(app: Litestar) -> None:
        _import_model_libraries(policy)
        clients = Clients.create(settings.cache_dir)
        app.state.clients = clients
        shared = _shared_state(settings)
        app.state.shared_state = shared
        if shared is not None:  # discover the topology (cluster slots, sentinel master) before traffic
            await shared.start()
        app.state.redis = shared.redis if shared is not None else None
        if shared is None:  # the embedded default: all state in this process
            budgets = MemoryBudgets()
            store = MemoryStore()
        else:
            budgets = FailoverBudgets(
                RedisBudgets(shared.redis, prefix=settings.redis_prefix, lease=settings.budget_lease,
                             gate=shared.gate, health=shared.health, owns_client=False,
                             confirm_replicas=shared.confirm_replicas),
                mode=settings.budgets_fail_mode)
            store = RedisStore(shared.redis, prefix=settings.redis_prefix + "cache:", health=shared.health,
                               gate=shared.gate)
        cache = ResponseCache(store)
        semantic = None
        if any(m.cache.semantic.enabled for m in policy.models.values()):
            from cache.semantic import SemanticCache

            semantic = SemanticCache(cache)
            _spawn(app, asyncio.to_thread(semantic.embedder.load))  # warm the model off the request path
        telemetry: Telemetry = app.state.telemetry
        breaker_store = MemoryBreakerStore() if shared is None else RedisBreakerStore(
            shared.redis, prefix=settings.redis_prefix + "brk:", health=shared.health, gate=shared.gate)
        breakers = Breakers(breaker_store, breaker_config(policy))
        gate = BreakerGate(breakers, key=lambda candidate: candidate.key)
        app.state.breakers = breakers

        def observe(candidate, error, seconds: float) -> None:
            telemetry.attempt(candidate.name, candidate.spec.provider, type(error).__name__ if error else None, seconds)
            gate.observe(candidate, error, seconds)

        # Stored Responses API answers (previous_response_id, GET/DELETE /v1/responses/{id}).
        app.state.responses = ResponseStore(store, ttl=lambda: app.state.gateway.runtime.policy.responses.ttl_seconds)
        # Routing decisions + feedback: the pipeline records every difficulty-scored request.
        app.state.decisions = MemoryDecisionStore() if shared is None else RedisDecisionStore(
            shared.redis, prefix=settings.redis_prefix)
        # Routing decided once per conversation: its own small LRU here, Redis shared by replicas there.
        sticky = Stickiness(MemoryStore(max_entries=100_000, max_bytes=32 * 1024 * 1024) if shared is None else store,
                            ttl=lambda: app.state.gateway.runtime.policy.sticky.ttl_seconds)
        app.state.gateway = Gateway(
            build_runtime(policy, settings, clients),
            Executor(observe=observe, gate=gate.gate),
            wires=WIRES, budgets=budgets, caching=Caching(cache, semantic), telemetry=telemetry, breakers=gate,
            sessions={Api.RESPONSES: app.state.responses}, decisions=app.state.decisions, sticky=sticky,
        )
        _spawn(app, _publish_state(app.state.gateway, breakers, telemetry))
        if app.state.gateway.runtime.router.scores_difficulty:
            _spawn(app, asyncio.to_thread(warm_scorer, app.state.gateway.runtime.router.scorer))
        # Replica-count advice per self-hosted target with an `autoscale` block (off the request path).
        app.state.autoscaler = AutoscaleSampler(
            lambda: app.state.gateway.runtime.providers, clients.session,
            lambda advice: telemetry.autoscale(advice.target, advice.desired, advice.replicas, advice.signal))
        _spawn(app, app.state.autoscaler.run())
        _start_providers(app.state.gateway.runtime)

        async def apply(new_policy: Policy) -> None:
            gateway: Gateway = app.state.gateway
            old = gateway.runtime
            runtime = build_runtime(new_policy, settings, clients, old)
            _import_model_libraries(new_policy)
            _start_providers(runtime)
            app.state.breakers.config = breaker_config(new_policy)
            gateway.runtime = runtime  # the atomic swap: requests in flight keep their snapshot
            retired = [p for name, p in old.providers.items() if runtime.providers.get(name) is not p]
            if retired:
                _spawn(app, _close_later(retired, grace=max(t.timeouts.total for t in old.policy.targets.values())))

        watcher = PolicyWatcher(settings.policy_path, apply,
                                on_result=lambda result: telemetry.policy_reload(result.ok))
        app.state.policy_watcher = watcher
        if settings.watch_policy:
            watcher.start()
        # Everything built so far lives as long as the process: keep it out of GC scans, which
        # otherwise walk hundreds of thousands of SDK and library objects on the hot path.
        gc.collect()
        gc.freeze()

    async def shutdown(app: Litestar) -> None:
        watcher = getattr(app.state, "policy_watcher", None)
        if watcher is not None:
            await watcher.stop()
        for task in list(app.state.background):
            task.cancel()
        gateway: Gateway | None = getattr(app.state, "gateway", None)
        if gateway is not None:
            await gateway.drain()
            for provider in gateway.runtime.providers.values():
                await provider.aclose()
            await gateway.budgets.aclose()
        if getattr(app.state, "clients", None) is not None:
            await app.state.clients.aclose()
        if getattr(app.state, "shared_state", None) is not None:
            await app.state.shared_state.aclose()
        app.state.telemetry.shutdown()

    async def readiness() -> dict[str, dict]:
        watcher = app.state.policy_watcher
        detail = f"{settings.policy_path} (version {watcher.version})"
        if watcher.last_error is not None:  # still serving the last valid policy
            detail += f"; last reload rejected: {watcher.last_error}"
        checks: dict[str, dict] = {"policy": {"ok": True, "detail": detail}}
        shared = app.state.shared_state
        if shared is not None:
            checks.update(await _store_readiness(shared.health, settings.budgets_fail_mode))
        else:
            checks["state_store"] = {"ok": True, "detail": "memory (embedded default)"}
        for name, provider in app.state.gateway.runtime.providers.items():
            if isinstance(provider, EmbeddedEngineProvider):  # ready once its model is loaded
                health = await provider.health()
                checks[f"engine:{name}"] = {"ok": health.ok, "detail": health.detail}
        semantic = app.state.gateway.semantic
        if semantic is not None:  # informational: lookups wait for the model rather than fail
            loaded = semantic.embedder.loaded
            checks["semantic_cache"] = {"ok": True, "detail": "model loaded" if loaded else "model loading"}
        return checks

    app = Litestar(
        route_handlers=[*INFERENCE_ROUTES, count_tokens, list_models, retrieve_model, healthz, readyz, metrics, my_usage, tenant_usage, reload_policy,
                        breakers_view, autoscale_view, *FEEDBACK_ROUTES],
        on_startup=[startup],
        on_shutdown=[shutdown],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[body_guard],  # every body read once, under the deadline and limits
        request_max_body_size=settings.body_ceiling_bytes,
        openapi_config=None,
        debug=False,
    )
    for handler in RESPONSES_ROUTES:  # GET/DELETE /v1/responses/{id}, …/input_items, …/input_tokens
        app.register(handler)
    app.state.settings = settings
    app.state.readiness = readiness
    app.state.background = set()
    app.state.telemetry = Telemetry()
    return app


def app_from_env() -> Litestar:
    """Factory for server workers: settings arrive as JSON in HYBRID_GATEWAY_SETTINGS."""
    return create_app(Settings.from_env())
