"""One request, start to finish: the step list of ARCHITECTURE.md as code.

auth → admission → route → budgets.reserve → cache → executor → budgets.settle → cache.store.
Routes stay thin and call `Gateway.chat_completions`; everything that can be swapped at run
time (policy, keys, providers) lives in one `Runtime` snapshot replaced atomically on reload.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.admission import Admitted, admit, check_body_size
from gateway.auth import KeyRing, Principal
from gateway.errors import GatewayError
from gateway.executor import Executor, Failure
from gateway.router import Candidate, Plan, Router
from gateway.schemas import ChatCompletionRequest, decode_chat_request
from gateway.streaming import StreamOutcome, relay
from policies.schema import Policy
from providers.base import Provider, ProviderRequest, Timeouts, Usage

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
    principal: Principal
    body: dict[str, Any]
    request: ChatCompletionRequest
    plan: Plan
    admitted: Admitted
    started: float
    headers: dict[str, str] = field(default_factory=dict)


def new_request_id(headers: Mapping[str, str]) -> str:
    incoming = headers.get("x-request-id")
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return "req_" + uuid.uuid4().hex


def cost_of(candidate: Candidate, usage: Usage) -> float:
    return candidate.spec.effective_pricing().cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


class Gateway:
    def __init__(self, runtime: Runtime, executor: Executor | None = None) -> None:
        self.runtime = runtime
        self.executor = executor or Executor()

    # -- the pipeline -------------------------------------------------------------------------

    async def chat_completions(self, raw: bytes, headers: Mapping[str, str]) -> Reply:
        runtime = self.runtime  # one snapshot for the whole request, even across a reload
        started = time.perf_counter()
        request_id = new_request_id(headers)
        try:
            principal = runtime.keyring.authenticate(headers)
            check_body_size(len(raw), runtime.policy.limits)
            body, request = decode_chat_request(raw)
            plan = runtime.router.plan(request.model, principal)
            admitted = admit(request, body, plan.model_spec, runtime.policy.limits)
        except GatewayError as exc:
            exc.headers.setdefault("x-request-id", request_id)
            raise
        call = Call(request_id, principal, body, request, plan, admitted, started)
        call.headers["x-request-id"] = request_id
        call.headers["x-gateway-model"] = plan.model
        if request.stream:
            return await self._stream(call)
        return await self._complete(call)

    def _provider_request(self, call: Call, candidate: Candidate) -> ProviderRequest:
        body = dict(call.body)
        body["model"] = candidate.spec.model
        if call.request.output_cap is None and (call.plan.model_spec.default_max_tokens or call.plan.model_spec.max_tokens):
            body["max_tokens"] = call.admitted.max_output_tokens // (call.request.n or 1)
        if call.request.stream:
            # Always ask for usage: budgets settle on real numbers. The relay hides the chunk
            # from callers that did not ask for it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        t = candidate.spec.timeouts
        return ProviderRequest(
            body=body,
            request_id=call.request_id,
            tenant=call.principal.tenant,
            timeouts=Timeouts(connect=t.connect, first_token=t.first_token, total=t.total),
        )

    def _route_headers(self, call: Call, candidate: Candidate, failures: list[Failure]) -> None:
        call.headers["x-gateway-target"] = candidate.name
        if failures:
            call.headers["x-gateway-fallbacks"] = ",".join(f.target for f in failures)

    async def _complete(self, call: Call) -> Reply:
        try:
            completion, candidate, failures = await self.executor.complete(
                call.plan, lambda c: self._provider_request(call, c)
            )
        except GatewayError as exc:
            exc.headers.update(call.headers)
            raise
        self._route_headers(call, candidate, failures)
        return Reply(200, call.headers, body=completion.body)

    async def _stream(self, call: Call) -> Reply:
        try:
            start = await self.executor.open_stream(call.plan, lambda c: self._provider_request(call, c))
        except GatewayError as exc:
            exc.headers.update(call.headers)
            raise
        self._route_headers(call, start.candidate, start.failures)
        include_usage = bool(call.request.stream_options and call.request.stream_options.include_usage)

        async def settle(outcome: StreamOutcome) -> None:
            return None

        frames = relay(
            start.first,
            start.rest,
            include_usage=include_usage,
            prompt_tokens_estimate=call.admitted.prompt_tokens,
            deadline=time.monotonic() + start.candidate.spec.timeouts.total,
            target=start.candidate.name,
            started=call.started,
            on_done=settle,
        )
        return Reply(200, call.headers, stream=frames)

    # -- read-only views ----------------------------------------------------------------------

    def list_models(self, headers: Mapping[str, str]) -> dict[str, Any]:
        runtime = self.runtime
        principal = runtime.keyring.authenticate(headers)
        allowed = principal.spec.allowed_models
        created = 1_700_000_000
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "hybrid-gateway"}
            for name in runtime.policy.models
            if allowed is None or name in allowed
        ]
        return {"object": "list", "data": data}
