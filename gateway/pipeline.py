"""One request, start to finish, for every endpoint: the step list of docs/architecture.md as code.

    auth → decode (protocols/) → resolve (sessions.py) → route (router.py) → admission
    (admission.py) → cache lookup (caching.py) → place (router.py) → reserve (accounting.py)
    → execute, deliver, settle, store, remember, record (delivery.py)

`Gateway.handle` reads as that list; each step is a function or small object with explicit
inputs and outputs. The per-request `Call` keeps only what truly spans steps (ids, timing, the
span, the response headers). Everything that can be swapped at run time (policy, keys,
providers) lives in one `Runtime` snapshot replaced atomically on reload. Settlement happens on
every exit path: success, upstream error, client disconnect and a stream cut mid-way (counting
what was delivered).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cache.prefix import prefix_fingerprint, prompt_cache_key
from cache.response import CachedAnswer, savings
from gateway.accounting import Accounting
from gateway.delivery import Delivery, Reply
from gateway.sessions import NO_SESSION, Session
from gateway.admission import (
    CLAMPED_HEADER,
    Admitted,
    admit,
    check_body_size,
    clamped_body,
    fitting,
    output_allowance,
    output_cap_to_send,
)
from gateway.auth import KeyRing, Principal
from gateway.budgets import Budgets, MemoryBudgets, Reservation
from gateway.breaker import BreakerGate, NoBreakers
from gateway.caching import Caching, replay
from gateway.routing.decisions import DecisionStore, record_decision
from gateway.routing.savings import avoided
from gateway.routing.sticky import NO_STICKINESS, NoStickiness, Stickiness, moved
from gateway.executor import Executor
from gateway.router import Candidate, Plan, Router
from gateway.telemetry import NullTelemetry, RequestRecord, Telemetry
from policies.schema import Policy
from protocols.anthropic_messages import forwarded_headers
from protocols.headers import for_target, verbatim_headers
from protocols.api import Api
from protocols.errors import GatewayError
from protocols.turns import turns_of
from protocols.wire import Inbound, Wire
from providers.base import Provider, ProviderRequest, Timeouts, Usage
from providers.translated import Translated

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
    plan: Plan | None = None

    def fail(self, exc: GatewayError) -> GatewayError:
        exc.headers.setdefault("x-request-id", self.request_id)
        exc.headers.update({k: v for k, v in self.headers.items() if k not in exc.headers})
        return exc


def new_request_id(headers: Mapping[str, str]) -> str:
    incoming = headers.get("x-request-id")
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return "req_" + uuid.uuid4().hex


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
        breakers: BreakerGate | NoBreakers | None = None,
        sessions: Mapping[Api, Session] | None = None,
        decisions: DecisionStore | None = None,
        sticky: Stickiness | NoStickiness = NO_STICKINESS,
    ) -> None:
        self.runtime = runtime
        self.wires = dict(wires)
        self.sessions = dict(sessions or {})
        self.decisions = decisions  # routing decisions for analysis and router training (None: not kept)
        self.sticky = sticky  # routing decided once per conversation (gateway/routing/sticky.py)
        self.executor = executor or Executor()
        self.budgets: Budgets = budgets if budgets is not None else MemoryBudgets()
        self.accounting = Accounting(self.budgets)
        self.caching = caching or Caching.off()
        self.telemetry = telemetry or NullTelemetry()
        self.breakers = breakers or NoBreakers()

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
                    turns = turns_of(api, inbound.body)  # what the user asked, in any protocol
                    plan = await runtime.router.plan(inbound.model, principal, inbound.conversation, headers,
                                                     inbound.prompt_tokens, api, turns)
                    plan = await self.sticky.hold(runtime.router, plan, turns, principal.tenant, api)
                    if plan.difficulty is not None:
                        span.set_attribute("gateway.difficulty", plan.difficulty.score)
                call.model, call.plan = plan.model, plan
                admitted = admit(inbound, plan.model_spec, runtime.policy.limits)
                plan.candidates = fitting(plan.candidates, admitted.prompt_tokens)
                if plan.pin_due and plan.candidates:  # kept in the background, while the upstream answers
                    self.accounting.later(self.sticky.served(plan, plan.candidates[0].name))
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
        await self.breakers.refresh([c.key for c in plan.candidates])  # see other replicas' trips, claim probes
        call.queue_s = time.perf_counter() - call.started
        # A target that speaks the caller's protocol sees the caller's headers (betas, client
        # features such as Codex's responses-lite) as sent; a translated one only the few a
        # translation keeps meaning for.
        verbatim, translated = verbatim_headers(headers), forwarded_headers(headers)

        def upstream_request(candidate: Candidate) -> ProviderRequest:
            t = candidate.timeouts
            cap = output_cap_to_send(inbound, admitted, plan.model_spec)
            # The caller's body, verbatim but for the model (and a missing output cap); a target
            # that does not speak `api` is a translating view (providers/translated.py).
            body = wire.prepare(inbound, candidate.spec.model, cap)
            allowance = output_allowance(inbound, admitted, candidate.spec)
            if allowance is not None:  # the policy clamps: say so, for the target that serves
                body = clamped_body(body, inbound, allowance)
                call.headers[CLAMPED_HEADER] = f"{inbound.output_param}={allowance}"
            else:
                call.headers.pop(CLAMPED_HEADER, None)
            return ProviderRequest(
                body=body,
                request_id=call.request_id, tenant=principal.tenant,
                timeouts=Timeouts(connect=t.connect, first_token=t.first_token, total=t.total),
                prefix_key=prefix_key, endpoint=candidate.endpoint, api=api,
                forward_headers=for_target(translated if isinstance(candidate.provider, Translated) else verbatim,
                                           candidate.spec.headers),
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
        if plan.sticky:
            call.headers["x-gateway-sticky"] = plan.sticky

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
        call.headers.update({"x-gateway-cache": "hit", "x-gateway-target": "cache", **hit.headers()})
        saved = savings(hit.usage, plan.candidates[0].spec.effective_pricing())
        self.telemetry.cache_event(call.tenant, plan.model, "hit", saved.tokens, saved.usd)
        self.record(call, None, Usage(), 0.0, status=200, error=None, ttft_s=time.perf_counter() - call.started,
                    fallbacks=0, cache="hit")
        present = self.sessions.get(inbound.api, NO_SESSION).presenter(inbound)
        if not inbound.stream:
            return Reply(200, call.headers, body=present.reply(hit.body))
        return Reply(200, call.headers, stream=present.events(replay(call.wire, inbound, hit)))

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
        plan = call.plan
        if plan is not None and candidate is not None and status == 200 and moved(plan, candidate.name):
            self.accounting.later(self.sticky.served(plan, candidate.name))  # a failover moves the conversation
        if plan is not None and plan.difficulty is not None:  # scored: worth keeping for the router
            self.accounting.later(record_decision(
                self.decisions, request_id=call.request_id, tenant=call.tenant, difficulty=plan.difficulty,
                route=plan.route_name, target=record.target, prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens, cost_usd=cost, sticky=plan.sticky,
                cached_tokens=usage.cached_tokens))
            if candidate is not None:
                frontier = self.runtime.router.frontier_pricing
                self.telemetry.routing_saved(call.tenant, plan.route_name, avoided(
                    frontier, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, cost))

    async def drain(self, timeout: float = 10.0) -> None:
        """Finish settlements and cache writes still in flight (graceful shutdown)."""
        await self.accounting.drain(timeout)

    # -- read-only views ----------------------------------------------------------------------

    def list_models(self, headers: Mapping[str, str]) -> dict[str, Any]:
        principal = self.runtime.keyring.authenticate(headers)
        return {"object": "list", "data": [model_object(name) for name in self._visible(principal)]}

    def retrieve_model(self, model: str, headers: Mapping[str, str]) -> dict[str, Any]:
        principal = self.runtime.keyring.authenticate(headers)
        # an alias (`local`, `claude-*`) names the model it routes to, as a chat request would
        if self.runtime.router.resolve(model) not in self._visible(principal):
            raise GatewayError(404, f"The model '{model}' does not exist or you do not have access to it.",
                               code="model_not_found", param="model")
        return model_object(model)

    def _visible(self, principal: Principal) -> list[str]:
        router = self.runtime.router
        return [name for name in router.public_models() if router.allowed(principal, name)]


def model_object(name: str) -> dict[str, Any]:
    """A public model as OpenAI's `GET /v1/models/{id}` returns it."""
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "hybrid-gateway"}
