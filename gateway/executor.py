"""Try a plan's candidates in order, with bounded retries, until one answers.

Retries (tenacity, jittered exponential backoff) apply only to errors the taxonomy marks
retryable; a bad request is returned at once because another target would refuse it too. For
streams the first chunk is awaited *before* the caller commits to a target, so failover stays
invisible to the client until the first byte; after that, a failure is the relay's to report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

from gateway.errors import GatewayError
from gateway.router import Candidate, Plan
from gateway.streaming import close_quietly
from protocols.wire import Peek
from policies.schema import RetrySpec
from providers.base import (
    BadRequest,
    Completion,
    ContextTooLong,
    ProviderError,
    ProviderRequest,
    RateLimited,
    Timeout,
    Unavailable,
)


@dataclass(slots=True)
class Failure:
    target: str
    error: ProviderError

    def as_detail(self) -> dict[str, object]:
        return {
            "target": self.target,
            "type": type(self.error).__name__,
            "message": self.error.message,
            "upstream_status": self.error.upstream_status,
        }


@dataclass(slots=True)
class StreamStart:
    candidate: Candidate
    head: list[bytes]  # the opening payloads, up to and including the first real one
    rest: AsyncIterator[bytes]
    failures: list[Failure] = field(default_factory=list)


# Called after every attempt with (candidate, error or None, seconds); breakers and telemetry hook in here.
AttemptObserver = Callable[[Candidate, ProviderError | None, float], None]
# Returns False when a candidate must be skipped (e.g. its breaker is open).
CandidateGate = Callable[[Candidate], bool]
# Opens a tracing span around one attempt on a candidate.
SpanFactory = Callable[[Candidate], AbstractContextManager]
# Whether an upstream's 200 answer (a body) is well-formed.
Check = Callable[[bytes], bool]
# What a stream payload is (valid? an opening event with no answer yet?): the caller's wire.
StreamPeek = Callable[[bytes], Peek]
MAX_PREAMBLE = 8  # opening events held back before the answer starts, at most


def _accept_all(_: bytes) -> bool:
    return True


def _plain(_: bytes) -> Peek:
    return Peek()


def _garbage(target: str) -> ProviderError:
    return Unavailable("the upstream answered 200 with a body that is not a valid answer", target=target)


async def _backoff_first(retry_state) -> None:
    """The first tenacity attempt is already a retry: wait before it, like before every other."""
    if retry_state.attempt_number == 1:
        await asyncio.sleep(retry_state.retry_object.wait(retry_state))


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


def _is_final(exc: ProviderError, candidate: Candidate, plan: Plan) -> bool:
    """Errors that no other target would answer differently: return them to the caller at once.

    A bad request is one of them, and so is a context-length refusal unless a later candidate has
    a known, larger context window: admission already dropped candidates whose known
    window cannot hold the prompt's estimate, but an estimate can be short (code, CJK), and a
    bigger fallback must still get its turn. Otherwise a retryable 5xx/529 would only make SDKs
    resend the same oversized prompt."""
    if isinstance(exc, ContextTooLong):
        limit = candidate.spec.context_limit()
        later = plan.candidates[plan.candidates.index(candidate) + 1:]
        return limit is None or not any((other.spec.context_limit() or 0) > limit for other in later)
    return isinstance(exc, BadRequest)


class Executor:
    def __init__(
        self,
        *,
        observe: AttemptObserver | None = None,
        gate: CandidateGate | None = None,
    ) -> None:
        self.observe = observe
        self.gate = gate

    async def _with_retries(self, candidate: Candidate, call, policy: RetrySpec, span: SpanFactory | None):
        """First attempt straight away; tenacity only once a retryable error has happened.

        Building tenacity's machinery costs tens of microseconds, which the common path (first
        attempt succeeds) should not pay.
        """
        try:
            return await self._attempt(candidate, call, span)
        except ProviderError as exc:
            if not exc.retryable or policy.attempts <= 1:
                raise
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts - 1) | stop_after_delay(policy.max_seconds),
            wait=wait_random_exponential(multiplier=policy.backoff_base, max=policy.backoff_max),
            retry=retry_if_exception(_is_retryable),
            reraise=True,
            before=_backoff_first,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(candidate, call, span)

    async def _attempt(self, candidate: Candidate, call, span: SpanFactory | None):
        started = time.perf_counter()
        try:
            with span(candidate) if span is not None else nullcontext():
                result = await call()
        except ProviderError as exc:
            exc.target = exc.target or candidate.name
            if self.observe:
                self.observe(candidate, exc, time.perf_counter() - started)
            raise
        except (asyncio.TimeoutError, TimeoutError):
            exc = Timeout("the upstream did not answer in time", target=candidate.name)
            if self.observe:
                self.observe(candidate, exc, time.perf_counter() - started)
            raise exc from None
        if self.observe:
            self.observe(candidate, None, time.perf_counter() - started)
        return result

    def _candidates(self, plan: Plan, failures: list[Failure]):
        for candidate in plan.candidates:
            if self.gate is not None and not self.gate(candidate):
                failures.append(Failure(candidate.name, _skipped(candidate.name)))
                continue
            yield candidate

    async def complete(
        self, plan: Plan, make_request: Callable[[Candidate], ProviderRequest], *, span: SpanFactory | None = None,
        check: Check = _accept_all,
    ) -> tuple[Completion, Candidate, list[Failure]]:
        """The first candidate's answer that arrives in time and is well-formed. One candidate's
        attempts share its `total` deadline: a hung target costs `total` once, not per retry."""
        failures: list[Failure] = []
        for candidate in self._candidates(plan, failures):
            request = make_request(candidate)

            async def call(candidate=candidate, request=request):
                completion = await candidate.provider.complete(request)
                if not check(completion.body):
                    raise _garbage(candidate.name)
                return completion

            try:
                async with asyncio.timeout(request.timeouts.total):
                    completion = await self._with_retries(candidate, call, plan.retry, span)
                return completion, candidate, failures
            except TimeoutError:
                error = Timeout("the upstream did not answer within the total time limit", target=candidate.name)
                if self.observe:
                    self.observe(candidate, error, request.timeouts.total)
                failures.append(Failure(candidate.name, error))
            except ProviderError as exc:
                if _is_final(exc, candidate, plan):
                    raise as_gateway_error(exc) from None
                failures.append(Failure(candidate.name, exc))
        raise all_failed(failures)

    async def open_stream(
        self, plan: Plan, make_request: Callable[[Candidate], ProviderRequest], *, span: SpanFactory | None = None,
        peek: StreamPeek = _plain,
    ) -> StreamStart:
        """The first candidate whose stream starts in time with a valid answer. Opening events
        (`Peek.preamble`) are held back with the first real one, so an upstream that opens a
        stream and then fails still fails over invisibly."""
        failures: list[Failure] = []
        for candidate in self._candidates(plan, failures):
            request = make_request(candidate)

            async def first_chunk(candidate=candidate, request=request):
                stream = candidate.provider.stream(request)
                head: list[bytes] = []
                try:
                    async with asyncio.timeout(min(request.timeouts.first_token, request.timeouts.total)):
                        while True:
                            payload = await anext(stream)
                            seen = peek(payload)
                            if not seen.valid:
                                raise _garbage(candidate.name)
                            head.append(payload)
                            if not seen.preamble or len(head) >= MAX_PREAMBLE:
                                break
                except BaseException:  # ended, hung or failed before the answer started: fail over
                    await close_quietly(stream)
                    raise
                return head, stream

            try:
                head, stream = await self._with_retries(candidate, first_chunk, plan.retry, span)
                return StreamStart(candidate, head, stream, failures)
            except StopAsyncIteration:
                failures.append(Failure(candidate.name, _empty(candidate.name)))
            except ProviderError as exc:
                if _is_final(exc, candidate, plan):
                    raise as_gateway_error(exc) from None
                failures.append(Failure(candidate.name, exc))
        raise all_failed(failures)


def _skipped(target: str) -> ProviderError:
    return Unavailable("circuit breaker open; target skipped", target=target)


def _empty(target: str) -> ProviderError:
    return Unavailable("the upstream closed the stream without sending anything", target=target)


def as_gateway_error(exc: ProviderError) -> GatewayError:
    headers = {"retry-after": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else None
    return GatewayError(
        exc.http_status, exc.message, type=exc.error_type, code=exc.code, headers=headers
    )


def all_failed(failures: list[Failure]) -> GatewayError:
    details = [f.as_detail() for f in failures]
    summary = "; ".join(f"{f.target}: {type(f.error).__name__}: {f.error.message}" for f in failures)
    if failures and all(isinstance(f.error, RateLimited) for f in failures):
        waits = [f.error.retry_after for f in failures if f.error.retry_after is not None]
        headers = {"retry-after": str(max(1, round(min(waits))))} if waits else None
        return GatewayError(
            429, f"Every target is rate limited. {summary}", type="rate_limit_error",
            code="rate_limit_exceeded", headers=headers, details=details,
        )
    return GatewayError(
        503,
        f"No target could serve this request. {summary}" if failures else "No target could serve this request.",
        type="service_unavailable",
        code="all_targets_failed",
        details=details,
    )
