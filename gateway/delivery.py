"""The last steps of a request that goes upstream: execute (executor.py), deliver (a body, or a
stream relayed by streaming.py), settle (accounting.py) on every exit path, store (caching.py),
remember (the protocol's Session) and record (telemetry).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.admission import Admitted
from gateway.budgets import Reservation
from gateway.caching import Lookup
from gateway.executor import Failure
from gateway.router import Candidate, Plan
from gateway.streaming import StreamOutcome, close_quietly, relay
from protocols.errors import GatewayError
from protocols.wire import Inbound
from providers.base import Usage
from providers.translated import Translated

from gateway.sessions import NO_SESSION

if TYPE_CHECKING:
    from gateway.pipeline import Call, Gateway


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


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
        if isinstance(candidate.provider, Translated):  # say what the target was not told as said
            headers.update(candidate.provider.report(self.inbound.body).headers())

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
        if self.session.keeps(self.inbound):  # before the reply: a caller may continue from it at once
            await self.session.remember(self.inbound, call.tenant, completion.body)
        return Reply(200, call.headers, body=self.session.presenter(self.inbound).reply(completion.body))

    async def stream(self) -> Reply:
        gateway, call = self.gateway, self.call
        try:
            start = await gateway.executor.open_stream(self.plan, self.make_request, span=self._attempt_span(),
                                                       peek=call.wire.peek)
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
        kept: list[bytes] | None = list(start.head) if cache or remember else None
        rest = start.rest if kept is None else _keeping(start.rest, kept)
        present = self.session.presenter(self.inbound)  # kept (stored, cached) as the upstream wrote it
        head, rest = [present.event(payload) for payload in start.head], present.events(rest)

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
            call.wire, head, rest,
            include_usage=self.inbound.include_usage,
            prompt_tokens_estimate=self.admitted.prompt_tokens,
            deadline=time.monotonic() + candidate.timeouts.total,
            target=candidate.name, started=call.started, on_done=settle,
        )
        return Reply(200, call.headers, stream=frames)
