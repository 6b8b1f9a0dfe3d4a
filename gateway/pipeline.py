"""One request, start to finish, for every endpoint: the step list of docs/architecture.md as code.

    auth → decode (protocols/) → route (router.py) → admission (admission.py) → cache lookup
    (caching.py) → reserve (accounting.py) → execute (executor.py) → deliver (streaming.py)
    → settle (accounting.py) → store (caching.py) → telemetry

`Gateway.handle` reads as that list; each step is a function or small object with explicit
inputs and outputs. The per-request `Call` keeps only what truly spans steps (ids, timing, the
span, the response headers). Everything that can be swapped at run time (policy, keys,
providers) lives in one `Runtime` snapshot replaced atomically on reload. Settlement happens on
every exit path: success, upstream error, client disconnect and a stream cut mid-way (counting
what was delivered).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cache.prefix import prefix_fingerprint, prompt_cache_key
from cache.response import CachedAnswer, savings
from gateway.accounting import Accounting
from gateway.admission import Admitted, admit, check_body_size, output_cap_to_send
from gateway.auth import KeyRing, Principal
from gateway.budgets import Budgets, MemoryBudgets, Reservation
from gateway.caching import Caching, Lookup, replay
from gateway.executor import Executor, Failure
from gateway.router import Candidate, Plan, Router
from gateway.streaming import StreamOutcome, close_quietly, relay
from gateway.telemetry import NullTelemetry, RequestRecord, Telemetry
from policies.schema import Policy
from protocols.api import Api
from protocols.errors import GatewayError
from protocols.wire import Inbound, Wire
from providers.base import Provider, ProviderRequest, Timeouts, Usage
from providers.translated import Translated

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Caller headers a target speaking the caller's protocol natively should see.
_FORWARDED = ("anthropic-version", "anthropic-beta")


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
    """What spans the steps of one request: identity, timing, tracing, response headers."""

    request_id: str
    started: float
    wire: Wire
    span: Any
    headers: dict[str, str] = field(default_factory=dict)
    tenant: str = ""
    model: str = ""
    stream: bool = False
    queue_s: float = 0.0  # auth/admission/cache/budget time before the first upstream attempt

    def fail(self, exc: GatewayError) -> GatewayError:
        exc.headers.setdefault("x-request-id", self.request_id)
        exc.headers.update({k: v for k, v in self.headers.items() if k not in exc.headers})
        return exc


def new_request_id(headers: Mapping[str, str]) -> str:
    incoming = headers.get("x-request-id")
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return "req_" + uuid.uuid4().hex


def cost_of(candidate: Candidate, usage: Usage) -> float:
    return candidate.spec.effective_pricing().cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                                                   usage.cache_write_tokens)


async def _keeping(stream: AsyncIterator[bytes], kept: list[bytes]) -> AsyncIterator[bytes]:
    try:
        async for payload in stream:
            kept.append(payload)
            yield payload
    finally:
        await close_quietly(stream)


class Session(Protocol):
    """Conversation state a protocol keeps between requests (the Responses API's stored responses
    and `previous_response_id`). `NoSession` for stateless protocols."""

    async def resolve(self, inbound: Inbound, tenant: str) -> Inbound:
        """Before routing: e.g. rebuild the conversation from a stored previous response."""
        ...

    def keeps(self, inbound: Inbound) -> bool:
        """Whether the answer must be remembered (then a stream is kept and assembled)."""
        ...

    async def remember(self, inbound: Inbound, tenant: str, answer: bytes) -> None:
        """After a complete answer: store it (off the response path)."""
        ...


class NoSession:
    async def resolve(self, inbound: Inbound, tenant: str) -> Inbound:
        return inbound

    def keeps(self, inbound: Inbound) -> bool:
        return False

    async def remember(self, inbound: Inbound, tenant: str, answer: bytes) -> None:
        pass


NO_SESSION = NoSession()


class Gateway:
    def __init__(
        self,
        runtime: Runtime,
        executor: Executor | None = None,
        *,
        wires: Mapping[Api, Wire],
        budgets: Budgets | None = None,
        caching: Caching | None = None,
        telemetry: Telemetry | NullTelemetry | None = None,
        breakers: Any = None,
        sessions: Mapping[Api, Session] | None = None,
    ) -> None:
        self.runtime = runtime
        self.wires = dict(wires)
        self.sessions = dict(sessions or {})
        self.executor = executor or Executor()
        self.budgets: Budgets = budgets if budgets is not None else MemoryBudgets()
        self.accounting = Accounting(self.budgets)
        self.caching = caching or Caching.off()
        self.telemetry = telemetry or NullTelemetry()
        self.breakers = breakers

    @property
    def semantic(self):
        return self.caching.semantic

    # -- the step list --------------------------------------------------------------------------

    async def handle(self, api: Api, raw: bytes, headers: Mapping[str, str]) -> Reply:
        runtime = self.runtime  # one snapshot for the whole request, even across a reload
        wire = self.wires[api]
        request_id = new_request_id(headers)
        span = self.telemetry.request_span(str(api), {"gateway.request_id": request_id, "gateway.api": str(api)},
                                           headers)
        call = Call(request_id, time.perf_counter(), wire, span)
        call.headers["x-request-id"] = call.request_id
        principal = self._step(call, "auth", "gateway.auth", lambda: runtime.keyring.authenticate(headers))
        call.tenant = principal.tenant
        try:
            with self.telemetry.stage(call.span, "gateway.admission"):
                check_body_size(len(raw), runtime.policy.limits)
                inbound = await self.sessions.get(api, NO_SESSION).resolve(wire.decode(raw), principal.tenant)
                call.stream = inbound.stream
                with self.telemetry.stage(call.span, "gateway.route") as span:
                    plan = await runtime.router.plan(inbound.model, principal, inbound.conversation, headers,
                                                     inbound.prompt_tokens, api)
                    if plan.difficulty is not None:
                        span.set_attribute("gateway.difficulty", plan.difficulty.score)
                call.model = plan.model
                admitted = admit(inbound, plan.model_spec, runtime.policy.limits)
        except GatewayError as exc:
            raise self._reject(call, exc, "model_not_found" if exc.code == "model_not_found" else "admission") from None
        self._plan_headers(call, plan)

        with self.telemetry.stage(call.span, "gateway.cache") as span:
            found = await self.caching.lookup(inbound, principal.tenant, plan.route, plan.cache, headers)
            span.set_attribute("gateway.cache", "hit" if found.hit else str(found.decision.status))
        if found.hit is not None:
            return self._cached_reply(call, inbound, plan, found.hit)
        self.telemetry.cache_event(principal.tenant, plan.model, str(found.decision.status))
        if "only-if-cached" in (headers.get("cache-control") or "").lower():
            # RFC 9111: answer from the cache or not at all, never from an upstream.
            error = GatewayError(504, "No cached answer for this request (Cache-Control: only-if-cached).",
                                 type="cache_miss", code="not_cached")
            raise self._reject(call, error, "not_cached") from None

        prefix_key = self._place(principal, inbound, plan, admitted)  # only requests that go upstream
        reservation = await self._reserve(call, principal, plan, admitted)
        if self.breakers is not None:  # see breakers another replica opened, claim probe permits
            await self.breakers.refresh([c.key for c in plan.candidates])
        call.queue_s = time.perf_counter() - call.started
        forward = {k: headers[k] for k in _FORWARDED if k in headers}

        def upstream_request(candidate: Candidate) -> ProviderRequest:
            t = candidate.timeouts
            cap = output_cap_to_send(inbound, admitted, plan.model_spec)
            # The caller's body, verbatim but for the model (and a missing output cap); a target
            # that does not speak `api` is a translating view (providers/translated.py).
            return ProviderRequest(
                body=wire.prepare(inbound, candidate.spec.model, cap),
                request_id=call.request_id, tenant=principal.tenant,
                timeouts=Timeouts(connect=t.connect, first_token=t.first_token, total=t.total),
                prefix_key=prefix_key, endpoint=candidate.endpoint, api=api, forward_headers=forward,
            )

        delivery = Delivery(self, call, inbound, plan, admitted, found, reservation, upstream_request)
        return await (delivery.stream() if inbound.stream else delivery.complete())

    # -- steps ------------------------------------------------------------------------------------

    def _step(self, call: Call, reason: str, stage: str, run):
        try:
            with self.telemetry.stage(call.span, stage):
                return run()
        except GatewayError as exc:
            raise self._reject(call, exc, reason) from None

    def _plan_headers(self, call: Call, plan: Plan) -> None:
        call.headers["x-gateway-model"] = plan.model
        if plan.route_name:
            call.headers["x-gateway-route"] = plan.route_name
        if plan.difficulty is not None:
            call.headers["x-gateway-difficulty"] = plan.difficulty.header()

    def _place(self, principal: Principal, inbound: Inbound, plan: Plan, admitted: Admitted) -> str | None:
        """Static-prefix fingerprint: replica placement by the router, and provider-side prompt
        caching hints for prefixes long enough to be worth it."""
        fingerprint, tokens = prefix_fingerprint(inbound.conversation)
        affinity = prompt_cache_key(principal.tenant, fingerprint) if fingerprint is not None else None
        self.runtime.router.place(plan, affinity, admitted.estimate)
        if affinity is not None and tokens >= plan.cache.prompt_cache_min_tokens:
            return affinity
        return None

    async def _reserve(self, call: Call, principal: Principal, plan: Plan, admitted: Admitted) -> Reservation:
        usd = max(c.spec.effective_pricing().cost(admitted.prompt_tokens, admitted.max_output_tokens)
                  for c in plan.candidates)
        try:
            with self.telemetry.stage(call.span, "gateway.budget"):
                reservation = await self.accounting.reserve(principal, plan.model, call.request_id,
                                                            admitted.estimate, usd)
        except GatewayError as exc:
            reason = {409: "bad_request", 503: "budget_store"}.get(exc.status, "budget")
            raise self._reject(call, exc, reason) from None
        call.headers.update(reservation.headers)
        return reservation

    def _cached_reply(self, call: Call, inbound: Inbound, plan: Plan, hit: CachedAnswer) -> Reply:
        call.headers.update({"x-gateway-cache": "hit", "x-gateway-target": "cache"})
        if hit.similarity is not None:
            call.headers["x-gateway-cache-similarity"] = f"{hit.similarity:.4f}"
        saved = savings(hit.usage, plan.candidates[0].spec.effective_pricing())
        self.telemetry.cache_event(call.tenant, plan.model, "hit", saved.tokens, saved.usd)
        self.record(call, None, Usage(), 0.0, status=200, error=None, ttft_s=time.perf_counter() - call.started,
                    fallbacks=0, cache="hit")
        if not inbound.stream:
            return Reply(200, call.headers, body=hit.body)
        return Reply(200, call.headers, stream=replay(call.wire, inbound, hit))

    # -- outcomes ---------------------------------------------------------------------------------

    def _reject(self, call: Call, exc: GatewayError, reason: str) -> GatewayError:
        exc.headers.setdefault("x-gateway-target", "none")  # refused before any target was tried
        call.fail(exc)
        self.telemetry.rejected(reason, call.tenant or None, call.model or None)
        self.telemetry.end_request_span(call.span, None, error=exc.code or reason)
        return exc

    def failed(self, call: Call, exc: GatewayError) -> GatewayError:
        call.fail(exc)
        exc.headers.setdefault("x-gateway-target", "none")  # every target failed: see x-gateway-fallbacks
        details = exc.details if isinstance(exc.details, list) else []
        if details:
            exc.headers.setdefault("x-gateway-fallbacks", ",".join(str(d["target"]) for d in details))
        for detail in details:
            self.telemetry.failover(str(detail["target"]), None)
        self.record(call, None, Usage(), 0.0, status=exc.status, error=exc.code, ttft_s=None,
                    fallbacks=len(details), cache="miss")
        return exc

    def record(self, call: Call, candidate: Candidate | None, usage: Usage, cost: float, *, status: int,
               error: str | None, ttft_s: float | None, fallbacks: int, cache: str) -> None:
        record = RequestRecord(
            tenant=call.tenant, model=call.model,
            target=candidate.name if candidate else None,
            provider=candidate.spec.provider if candidate else None,
            stream=call.stream, status=status, error_type=error,
            duration_s=time.perf_counter() - call.started, ttft_s=ttft_s, queue_s=call.queue_s,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens, cost_usd=cost, cache=cache, fallbacks=fallbacks,
        )
        self.telemetry.request_done(record)
        self.telemetry.end_request_span(call.span, record, error=error)

    async def drain(self, timeout: float = 10.0) -> None:
        """Finish settlements and cache writes still in flight (graceful shutdown)."""
        await self.accounting.drain(timeout)

    # -- read-only views ----------------------------------------------------------------------

    def list_models(self, headers: Mapping[str, str]) -> dict[str, Any]:
        principal = self.runtime.keyring.authenticate(headers)
        return {"object": "list", "data": [model_object(name) for name in self._visible(principal)]}

    def retrieve_model(self, model: str, headers: Mapping[str, str]) -> dict[str, Any]:
        principal = self.runtime.keyring.authenticate(headers)
        if model not in self._visible(principal):
            raise GatewayError(404, f"The model '{model}' does not exist or you do not have access to it.",
                               code="model_not_found", param="model")
        return model_object(model)

    def _visible(self, principal: Principal) -> list[str]:
        router = self.runtime.router
        return [name for name in router.public_models() if router.allowed(principal, name)]


def model_object(name: str) -> dict[str, Any]:
    """A public model as OpenAI's `GET /v1/models/{id}` returns it."""
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "hybrid-gateway"}


class Delivery:
    """Execute and deliver one admitted, reserved request; settle and store on every path."""

    def __init__(self, gateway: Gateway, call: Call, inbound: Inbound, plan: Plan, admitted: Admitted,
                 found: Lookup, reservation: Reservation, make_request) -> None:
        self.gateway = gateway
        self.call = call
        self.inbound = inbound
        self.plan = plan
        self.admitted = admitted
        self.found = found
        self.reservation = reservation
        self.make_request = make_request
        self.session = gateway.sessions.get(inbound.api, NO_SESSION)

    def _settle(self, usage: Usage, usd: float) -> None:
        self.gateway.accounting.settle(self.reservation, usage, usd)

    def _attempt_span(self):
        telemetry, span = self.gateway.telemetry, self.call.span
        return lambda c: telemetry.stage(span, "gateway.attempt", {
            "gateway.target": c.name, "gen_ai.provider.name": c.spec.provider, "gen_ai.request.model": c.spec.model})

    def _route_headers(self, candidate: Candidate, failures: list[Failure]) -> None:
        headers = self.call.headers
        headers["x-gateway-target"] = candidate.name
        if failures:
            headers["x-gateway-fallbacks"] = ",".join(f.target for f in failures)
            for failure in failures:
                self.gateway.telemetry.failover(failure.target, candidate.name)
        if self.gateway.caching.enabled:
            headers["x-gateway-cache"] = self.found.header
        if isinstance(candidate.provider, Translated):  # say what the target could not be told
            dropped = candidate.provider.dropped(self.inbound.body)
            if dropped:
                headers["x-gateway-dropped"] = ",".join(dropped)

    async def complete(self) -> Reply:
        gateway, call = self.gateway, self.call
        usage, usd = Usage(), 0.0
        try:
            completion, candidate, failures = await gateway.executor.complete(
                self.plan, self.make_request, span=self._attempt_span(), check=call.wire.check)
            usage, usd = completion.usage, cost_of(candidate, completion.usage)
        except GatewayError as exc:
            raise gateway.failed(call, exc) from None
        except asyncio.CancelledError:
            # The caller went away mid-call: the upstream may still bill the prompt.
            usage = Usage(prompt_tokens=self.admitted.prompt_tokens)
            usd = max(cost_of(c, usage) for c in self.plan.candidates)
            raise
        finally:
            self._settle(usage, usd)
        self._route_headers(candidate, failures)
        gateway.record(call, candidate, usage, usd, status=200, error=None, ttft_s=None,
                       fallbacks=len(failures), cache=str(self.found.decision.status))
        if gateway.caching.should_store(self.found):
            gateway.caching.store_later(self.found, completion.body, usage, self.plan.cache, gateway.accounting.later)
        if self.session.keeps(self.inbound):
            gateway.accounting.later(self.session.remember(self.inbound, call.tenant, completion.body))
        return Reply(200, call.headers, body=completion.body)

    async def stream(self) -> Reply:
        gateway, call = self.gateway, self.call
        try:
            start = await gateway.executor.open_stream(self.plan, self.make_request, span=self._attempt_span(),
                                                       check=lambda payload: call.wire.peek(payload).valid)
        except GatewayError as exc:
            self._settle(Usage(), 0.0)
            raise gateway.failed(call, exc) from None
        except BaseException:
            self._settle(Usage(), 0.0)
            raise
        candidate = start.candidate
        self._route_headers(candidate, start.failures)
        # A cacheable stream is kept (references only) so a clean finish can be stored as one answer.
        cache = gateway.caching.should_store(self.found) and call.wire.cacheable_streams
        remember = self.session.keeps(self.inbound)
        kept: list[bytes] | None = [start.first] if cache or remember else None
        rest = start.rest if kept is None else _keeping(start.rest, kept)

        async def settle(outcome: StreamOutcome) -> None:
            usd = cost_of(candidate, outcome.usage)
            self._settle(outcome.usage, usd)
            if kept is not None and outcome.completed and outcome.error is None:
                body = call.wire.assemble(kept)
                if body is not None and cache:
                    gateway.caching.store_later(self.found, body, outcome.usage, self.plan.cache,
                                                gateway.accounting.later)
                if body is not None and remember:
                    gateway.accounting.later(self.session.remember(self.inbound, call.tenant, body))
            error = type(outcome.error).__name__ if outcome.error else (None if outcome.completed else "client_disconnect")
            gateway.record(call, candidate, outcome.usage, usd, status=200, error=error, ttft_s=outcome.first_byte_s,
                           fallbacks=len(start.failures), cache=str(self.found.decision.status))

        frames = relay(
            call.wire, start.first, rest,
            include_usage=self.inbound.include_usage,
            prompt_tokens_estimate=self.admitted.prompt_tokens,
            deadline=time.monotonic() + candidate.timeouts.total,
            target=candidate.name, started=call.started, on_done=settle,
        )
        return Reply(200, call.headers, stream=frames)
