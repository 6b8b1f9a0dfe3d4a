"""One request, start to finish: the step list of ARCHITECTURE.md as code.

auth → admission → route → cache lookup → budgets.reserve → executor → budgets.settle →
cache store → telemetry. Routes stay thin and call `Gateway.chat_completions`; everything that
can be swapped at run time (policy, keys, providers) lives in one `Runtime` snapshot replaced
atomically on reload. Settlement happens on every exit path: success, upstream error, client
disconnect and a stream cut mid-way (counting what was delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cache.prefix import prefix_fingerprint, prompt_cache_key
from cache.response import (
    CacheDecision,
    CachedAnswer,
    CacheStatus,
    ResponseCache,
    assemble_completion,
    replay_chunks,
    savings,
)
from gateway.admission import Admitted, admit, check_body_size, estimate_prompt_tokens
from gateway.auth import KeyRing, Principal
from gateway.budgets import BudgetExceeded, Budgets, BudgetsUnavailable, MemoryBudgets, Reservation
from gateway.errors import GatewayError
from gateway.executor import Executor, Failure
from gateway.router import Candidate, Plan, Router
from gateway.schemas import ChatCompletionRequest, decode_chat_request
from gateway.streaming import DONE, StreamOutcome, close_quietly, relay, sse
from gateway.telemetry import RequestRecord, Telemetry
from policies.schema import Policy
from providers.base import Provider, ProviderRequest, Timeouts, Usage

if TYPE_CHECKING:
    from cache.semantic import SemanticCache
    from gateway.breaker import BreakerGate

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NO_CACHE = CacheDecision(False, False, CacheStatus.BYPASS, "no cache configured")


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


@dataclass(slots=True)
class Runtime:
    """Everything derived from one policy; never mutated, only replaced."""

    policy: Policy
    keyring: KeyRing
    router: Router
    providers: dict[str, Provider]


@dataclass(slots=True)
class Call:
    """Per-request state shared by the pipeline's steps."""

    request_id: str
    started: float
    span: Any = None
    principal: Principal | None = None
    body: dict[str, Any] = field(default_factory=dict)
    request: ChatCompletionRequest | None = None
    plan: Plan | None = None
    admitted: Admitted | None = None
    prefix_key: str | None = None
    cache: CacheDecision = _NO_CACHE
    cache_key: str | None = None
    semantic_query: Any = None
    reservation: Reservation | None = None
    queue_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def new_request_id(headers: Mapping[str, str]) -> str:
    incoming = headers.get("x-request-id")
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return "req_" + uuid.uuid4().hex


def cost_of(candidate: Candidate, usage: Usage) -> float:
    return candidate.spec.effective_pricing().cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


def _budget_error(exc: BudgetExceeded) -> GatewayError:
    if exc.code == "insufficient_quota":
        kind = "insufficient_quota"
    else:
        kind = "requests" if exc.window in ("requests_per_minute", "concurrent_requests") else "tokens"
    return GatewayError(429, exc.message, type=kind, code=exc.code, headers=dict(exc.headers))


async def _keeping(stream: AsyncIterator[bytes], kept: list[bytes]) -> AsyncIterator[bytes]:
    try:
        async for payload in stream:
            kept.append(payload)
            yield payload
    finally:
        await close_quietly(stream)


class Gateway:
    def __init__(
        self,
        runtime: Runtime,
        executor: Executor | None = None,
        *,
        budgets: Budgets | None = None,
        cache: ResponseCache | None = None,
        semantic: SemanticCache | None = None,
        telemetry: Telemetry | None = None,
        breakers: BreakerGate | None = None,
    ) -> None:
        self.runtime = runtime
        self.breakers = breakers
        self.executor = executor or Executor()
        self.budgets: Budgets = budgets if budgets is not None else MemoryBudgets()
        self.cache = cache
        self.semantic = semantic
        self.telemetry = telemetry
        self._background: set[asyncio.Task] = set()

    # -- helpers ------------------------------------------------------------------------------

    def _stage(self, call: Call, name: str, attributes: dict | None = None):
        if self.telemetry is None or call.span is None:
            return contextlib.nullcontext()
        return self.telemetry.stage(call.span, name, attributes)

    def _reject(self, call: Call, exc: GatewayError, reason: str) -> GatewayError:
        exc.headers.setdefault("x-request-id", call.request_id)
        exc.headers.setdefault("x-gateway-target", "none")  # refused before any target was tried
        exc.headers.update(call.headers)
        if self.telemetry is not None:
            tenant = call.principal.tenant if call.principal else None
            self.telemetry.rejected(reason, tenant, call.plan.model if call.plan else None)
            if call.span is not None:
                self.telemetry.end_request_span(call.span, None, error=exc.code or reason)
        return exc

    def _record(self, call: Call, candidate: Candidate | None, usage: Usage, cost: float, *, status: int,
                error: str | None, ttft_s: float | None, fallbacks: int, cache: str) -> None:
        if self.telemetry is None:
            return
        record = RequestRecord(
            tenant=call.principal.tenant if call.principal else "",
            model=call.plan.model if call.plan else "",
            target=candidate.name if candidate else None,
            provider=candidate.spec.provider if candidate else None,
            stream=bool(call.request and call.request.stream),
            status=status,
            error_type=error,
            duration_s=time.perf_counter() - call.started,
            ttft_s=ttft_s,
            queue_s=call.queue_s,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost_usd=cost,
            cache=cache,
            fallbacks=fallbacks,
        )
        self.telemetry.request_done(record)
        if call.span is not None:
            self.telemetry.end_request_span(call.span, record, error=error)

    # -- the pipeline -------------------------------------------------------------------------

    async def chat_completions(self, raw: bytes, headers: Mapping[str, str]) -> Reply:
        runtime = self.runtime  # one snapshot for the whole request, even across a reload
        call = Call(new_request_id(headers), time.perf_counter())
        if self.telemetry is not None:
            call.span = self.telemetry.request_span("chat.completions", {"gateway.request_id": call.request_id}, headers)
        call.headers["x-request-id"] = call.request_id
        try:
            with self._stage(call, "gateway.auth"):
                call.principal = runtime.keyring.authenticate(headers)
        except GatewayError as exc:
            raise self._reject(call, exc, "auth") from None
        try:
            with self._stage(call, "gateway.admission"):
                check_body_size(len(raw), runtime.policy.limits)
                call.body, call.request = decode_chat_request(raw)
                prompt_tokens = estimate_prompt_tokens(call.body)
                with self._stage(call, "gateway.route") as span:
                    call.plan = await runtime.router.plan(call.request.model, call.principal, call.body, headers,
                                                          prompt_tokens)
                    if span is not None and call.plan.difficulty is not None:
                        span.set_attribute("gateway.difficulty", call.plan.difficulty.score)
                call.admitted = admit(call.request, prompt_tokens, call.plan.model_spec, runtime.policy.limits)
        except GatewayError as exc:
            raise self._reject(call, exc, "model_not_found" if exc.code == "model_not_found" else "admission") from None
        call.headers["x-gateway-model"] = call.plan.model
        if call.plan.route_name:
            call.headers["x-gateway-route"] = call.plan.route_name
        if call.plan.difficulty is not None:
            call.headers["x-gateway-difficulty"] = call.plan.difficulty.header()

        hit = await self._cache_lookup(call, headers)
        if hit is not None:
            return self._cached_reply(call, hit)
        if "only-if-cached" in (headers.get("cache-control") or "").lower():
            # RFC 9111: answer from the cache or not at all, never from an upstream.
            error = GatewayError(504, "No cached answer for this request (Cache-Control: only-if-cached).",
                                 type="cache_miss", code="not_cached")
            raise self._reject(call, error, "not_cached") from None
        self._prefix(call)  # only for requests that go upstream: hits need no placement
        await self._reserve(call)
        if self.breakers is not None:  # see breakers another replica opened, claim probe permits
            await self.breakers.refresh([c.key for c in call.plan.candidates])
        call.queue_s = time.perf_counter() - call.started
        if call.request.stream:
            return await self._stream(call)
        return await self._complete(call)

    def _prefix(self, call: Call) -> None:
        """Static-prefix fingerprint: replica affinity, and provider-side prompt caching hints for
        prefixes long enough to be worth it."""
        fingerprint, tokens = prefix_fingerprint(call.body)
        affinity = prompt_cache_key(call.principal.tenant, fingerprint) if fingerprint is not None else None
        if affinity is not None and tokens >= call.plan.cache.prompt_cache_min_tokens:
            call.prefix_key = affinity
        self._place(call, affinity)

    def _place(self, call: Call, affinity: str | None) -> None:
        """A target with several replicas becomes one candidate per replica, in placement order:
        failover tries another replica of the same target before the next target."""
        placed: list[Candidate] = []
        tokens = call.admitted.prompt_tokens + call.admitted.max_output_tokens
        for candidate in call.plan.candidates:
            placement = getattr(candidate.provider, "placement", None)
            endpoints = placement(affinity, tokens) if placement is not None else []
            if len(endpoints) > 1:
                placed.extend(Candidate(candidate.name, candidate.spec, candidate.provider, candidate.timeouts, url)
                              for url in endpoints)
            else:
                placed.append(candidate)
        call.plan.candidates = placed

    async def _cache_lookup(self, call: Call, headers: Mapping[str, str]) -> CachedAnswer | None:
        if self.cache is None:
            return None
        spec = call.plan.cache
        with self._stage(call, "gateway.cache") as span:
            call.cache = self.cache.decision(headers, spec, call.body)
            if call.cache.lookup or call.cache.store:
                call.cache_key = self.cache.cache_key(call.principal.tenant, call.plan.route, call.body)
            hit = await self.cache.lookup(call.cache_key, max_age=call.cache.max_age) if call.cache.lookup else None
            if call.cache.semantic and self.semantic is not None:
                call.semantic_query = self.semantic.prepare(call.principal.tenant, call.plan.route, call.body, spec)
                if hit is None and call.cache.lookup and call.semantic_query is not None:
                    hit = await self.semantic.lookup(call.semantic_query, max_age=call.cache.max_age)
            if span is not None:
                span.set_attribute("gateway.cache", "hit" if hit else str(call.cache.status))
        if hit is None and self.telemetry is not None:
            self.telemetry.cache_event(call.principal.tenant, call.plan.model, str(call.cache.status))
        return hit

    def _cached_reply(self, call: Call, hit: CachedAnswer) -> Reply:
        call.headers.update({"x-gateway-cache": "hit", "x-gateway-target": "cache"})
        if hit.similarity is not None:
            call.headers["x-gateway-cache-similarity"] = f"{hit.similarity:.4f}"
        primary = call.plan.candidates[0]
        saved = savings(hit.usage, primary.spec.effective_pricing())
        if self.telemetry is not None:
            self.telemetry.cache_event(call.principal.tenant, call.plan.model, "hit", saved.tokens, saved.usd)
        self._record(call, None, Usage(), 0.0, status=200, error=None, ttft_s=time.perf_counter() - call.started,
                     fallbacks=0, cache="hit")
        if not call.request.stream:
            return Reply(200, call.headers, body=hit.body)
        include_usage = bool(call.request.stream_options and call.request.stream_options.include_usage)
        frames = [sse(p) for p in replay_chunks(hit.body, include_usage)] + [DONE]

        async def replay() -> AsyncIterator[bytes]:
            for frame in frames:
                yield frame

        return Reply(200, call.headers, stream=replay())

    async def _reserve(self, call: Call) -> None:
        admitted = call.admitted
        estimate = admitted.prompt_tokens + admitted.max_output_tokens
        usd = max(c.spec.effective_pricing().cost(admitted.prompt_tokens, admitted.max_output_tokens)
                  for c in call.plan.candidates)
        try:
            with self._stage(call, "gateway.budget"):
                call.reservation = await self.budgets.reserve(
                    tenant=call.principal.tenant, spec=call.principal.spec, model=call.plan.model,
                    request_id=call.request_id, tokens=estimate, usd=usd,
                )
        except BudgetExceeded as exc:
            raise self._reject(call, _budget_error(exc), "budget") from None
        except BudgetsUnavailable:
            error = GatewayError(503, "Budget accounting is unavailable; try again shortly.",
                                 type="service_unavailable", code="budgets_unavailable", headers={"retry-after": "1"})
            raise self._reject(call, error, "budget_store") from None
        except ValueError as exc:  # a request id reused while its reservation is still open
            raise self._reject(call, GatewayError(409, str(exc), code="duplicate_request_id"), "bad_request") from None
        call.headers.update(call.reservation.headers)

    def _settle(self, call: Call, usage: Usage, usd: float) -> None:
        """Settle after the reply, not before it: the caller never waits for the budget store.

        The task is tracked and drained on shutdown; if a replica dies first, the reservation
        expires and is reclaimed (budgets.py), so nothing stays reserved for ever.
        """
        if call.reservation is not None:
            self._later(self.budgets.settle(call.reservation, tokens=usage.total_tokens, usd=usd))

    def _later(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """Finish settlements and cache writes still in flight (graceful shutdown)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)

    def _provider_request(self, call: Call, candidate: Candidate) -> ProviderRequest:
        body = dict(call.body)
        body["model"] = candidate.spec.model
        spec = call.plan.model_spec
        if call.request.output_cap is None and (spec.default_max_tokens or spec.max_tokens):
            body["max_tokens"] = call.admitted.max_output_tokens // (call.request.n or 1)
        if call.request.stream:
            # Always ask for usage: budgets settle on real numbers. The relay hides the chunk
            # from callers that did not ask for it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        t = candidate.timeouts
        return ProviderRequest(
            body=body,
            request_id=call.request_id,
            tenant=call.principal.tenant,
            timeouts=Timeouts(connect=t.connect, first_token=t.first_token, total=t.total),
            prefix_key=call.prefix_key,
            endpoint=candidate.endpoint,
        )

    def _attempt_span(self, call: Call):
        """Per-attempt child spans, when tracing."""
        if self.telemetry is None or call.span is None:
            return None
        return lambda c: self.telemetry.stage(call.span, "gateway.attempt", {
            "gateway.target": c.name, "gen_ai.provider.name": c.spec.provider, "gen_ai.request.model": c.spec.model})

    def _route_headers(self, call: Call, candidate: Candidate, failures: list[Failure]) -> None:
        call.headers["x-gateway-target"] = candidate.name
        if failures:
            call.headers["x-gateway-fallbacks"] = ",".join(f.target for f in failures)
            if self.telemetry is not None:
                for failure in failures:
                    self.telemetry.failover(failure.target, candidate.name)
        if self.cache is not None:
            call.headers["x-gateway-cache"] = "miss" if call.cache.lookup else "bypass"

    def _failed(self, call: Call, exc: GatewayError) -> GatewayError:
        exc.headers.update(call.headers)
        exc.headers.setdefault("x-gateway-target", "none")  # every target failed: see x-gateway-fallbacks
        if isinstance(exc.details, list) and exc.details:
            exc.headers.setdefault("x-gateway-fallbacks", ",".join(str(d["target"]) for d in exc.details))
        if self.telemetry is not None and isinstance(exc.details, list):
            for detail in exc.details:
                self.telemetry.failover(str(detail["target"]), None)
        self._record(call, None, Usage(), 0.0, status=exc.status, error=exc.code, ttft_s=None,
                     fallbacks=len(exc.details or []) if isinstance(exc.details, list) else 0, cache="miss")
        return exc

    async def _complete(self, call: Call) -> Reply:
        usage, usd = Usage(), 0.0
        try:
            completion, candidate, failures = await self.executor.complete(
                call.plan, lambda c: self._provider_request(call, c), span=self._attempt_span(call)
            )
            usage, usd = completion.usage, cost_of(candidate, completion.usage)
        except GatewayError as exc:
            raise self._failed(call, exc) from None
        except asyncio.CancelledError:
            # The caller went away mid-call: the upstream may still bill the prompt.
            usage = Usage(prompt_tokens=call.admitted.prompt_tokens)
            usd = max(cost_of(c, usage) for c in call.plan.candidates)
            raise
        finally:
            self._settle(call, usage, usd)
        self._route_headers(call, candidate, failures)
        self._record(call, candidate, usage, usd, status=200, error=None, ttft_s=None,
                     fallbacks=len(failures), cache=str(call.cache.status))
        if call.cache.store and call.cache_key is not None:
            self._store_later(call, completion.body, usage)
        return Reply(200, call.headers, body=completion.body)

    def _store_later(self, call: Call, body: bytes, usage: Usage) -> None:
        """Write the cache off the response path: the caller should not wait for Redis."""
        spec = call.plan.cache

        async def store() -> None:
            stored = await self.cache.store(call.cache_key, body, usage, spec.ttl_seconds, spec.max_entry_bytes)
            if stored and self.semantic is not None and call.semantic_query is not None:
                await self.semantic.add(call.semantic_query, call.cache_key, spec.ttl_seconds)

        self._later(store())

    async def _stream(self, call: Call) -> Reply:
        try:
            start = await self.executor.open_stream(call.plan, lambda c: self._provider_request(call, c),
                                                    span=self._attempt_span(call))
        except GatewayError as exc:
            self._settle(call, Usage(), 0.0)
            raise self._failed(call, exc) from None
        except BaseException:
            self._settle(call, Usage(), 0.0)
            raise
        candidate = start.candidate
        self._route_headers(call, candidate, start.failures)
        include_usage = bool(call.request.stream_options and call.request.stream_options.include_usage)
        # A cacheable stream is kept (references only) so a clean finish can be stored as a completion.
        kept: list[bytes] | None = [start.first] if call.cache.store and call.cache_key is not None else None
        rest = start.rest if kept is None else _keeping(start.rest, kept)

        async def settle(outcome: StreamOutcome) -> None:
            usd = cost_of(candidate, outcome.usage)
            self._settle(call, outcome.usage, usd)
            if kept is not None and outcome.completed and outcome.error is None:
                body = assemble_completion(kept)
                if body is not None:
                    self._store_later(call, body, outcome.usage)
            error = type(outcome.error).__name__ if outcome.error else (None if outcome.completed else "client_disconnect")
            self._record(call, candidate, outcome.usage, usd, status=200, error=error, ttft_s=outcome.first_byte_s,
                         fallbacks=len(start.failures), cache=str(call.cache.status))

        frames = relay(
            start.first,
            rest,
            include_usage=include_usage,
            prompt_tokens_estimate=call.admitted.prompt_tokens,
            deadline=time.monotonic() + candidate.timeouts.total,
            target=candidate.name,
            started=call.started,
            on_done=settle,
        )
        return Reply(200, call.headers, stream=frames)

    # -- read-only views ----------------------------------------------------------------------

    def list_models(self, headers: Mapping[str, str]) -> dict[str, Any]:
        runtime = self.runtime
        principal = runtime.keyring.authenticate(headers)
        created = 1_700_000_000
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "hybrid-gateway"}
            for name in runtime.router.public_models()
            if runtime.router.allowed(principal, name)
        ]
        return {"object": "list", "data": data}
