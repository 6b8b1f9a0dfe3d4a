"""The one small contract every upstream provider implements, and the error taxonomy.

A provider declares the protocols it speaks natively (`apis`). It receives an already validated
request body in one of them (a plain dict, so unknown fields survive for upstreams that
understand them; `ProviderRequest.api` says which) and returns that protocol's bytes: a response
document, or a stream of JSON payloads (the part after `data: `). Translation between protocols
is not a provider's business: `providers/translated.py` wraps a provider with a translator from
`protocols/` when the caller speaks something the upstream does not.

Errors are classified once, here, so the executor never inspects provider-specific exceptions:
each class knows whether a retry may help and whether it is evidence that the target is unhealthy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from protocols.api import Api
from protocols.usage import Usage

__all__ = ["Api", "Usage"]  # re-exported: providers speak in these terms


@dataclass(slots=True)
class Timeouts:
    connect: float = 5.0
    first_token: float = 60.0
    total: float = 600.0


@dataclass(slots=True)
class ProviderRequest:
    """One call to one target.

    `body` is the request in protocol `api` with `model` already set to the upstream model.
    For streams the gateway always asks upstreams for usage (`stream_options.include_usage`),
    because budgets must be settled with real numbers; it hides that chunk from callers that did
    not ask for it.
    """

    body: dict[str, Any]
    request_id: str
    tenant: str = ""
    timeouts: Timeouts = field(default_factory=Timeouts)
    # Fingerprint of the static prompt prefix (system prompt, tools, leading turns): used for
    # replica affinity and for provider-side prompt caching hints.
    prefix_key: str | None = None
    # The replica to send to, for a target with several endpoints (chosen by its balancer).
    endpoint: str | None = None
    api: Api = Api.CHAT
    # Caller headers a native upstream should see (e.g. `anthropic-beta`), already filtered.
    forward_headers: dict[str, str] = field(default_factory=dict)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


@dataclass(slots=True)
class Completion:
    """A finished, non-streamed answer: the response document's bytes plus parsed usage."""

    body: bytes
    usage: Usage


@dataclass(slots=True)
class Health:
    ok: bool
    detail: str = ""


@runtime_checkable
class Provider(Protocol):
    """One upstream target. Implementations must be safe to share across concurrent requests."""

    name: str
    apis: frozenset[Api]  # the protocols this upstream speaks natively

    async def complete(self, request: ProviderRequest) -> Completion:
        """Non-streamed call. Raises a `ProviderError` subclass on failure."""
        ...

    def stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        """Streamed call yielding the protocol's stream payloads (JSON, without SSE framing), in order.

        Must raise its `ProviderError` before yielding anything when the upstream refuses the
        call (status error, connect failure), so the executor can fail over invisibly. The final
        payload of an OpenAI stream carries `usage` (with `choices: []`), as `include_usage` does.
        """
        ...

    async def health(self) -> Health:
        ...

    async def aclose(self) -> None:
        ...


@dataclass(frozen=True, slots=True)
class TokenCount:
    tokens: int
    source: str  # "upstream" (the provider counted) or "tokenizer" (the model's own tokenizer)


@runtime_checkable
class TokenCounter(Protocol):
    """A provider that can count a request's input tokens exactly (None: not for this request)."""

    async def count_tokens(self, request: ProviderRequest) -> TokenCount | None: ...


@runtime_checkable
class Placeable(Protocol):
    """A provider with several replicas: it orders them for one request (affinity, load, health)."""

    def placement(self, prefix_key: str | None, tokens: int) -> list[str]: ...


class ProviderError(Exception):
    """Base of the taxonomy. Subclasses set the class attributes; instances carry details."""

    retryable: ClassVar[bool] = False
    trips_breaker: ClassVar[bool] = False
    http_status: ClassVar[int] = 502
    error_type: ClassVar[str] = "upstream_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        target: str = "",
        upstream_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        self.upstream_status = upstream_status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, target={self.target!r})"


class RateLimited(ProviderError):
    retryable = True
    trips_breaker = True
    http_status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Timeout(ProviderError):
    retryable = True
    trips_breaker = True
    http_status = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class Unavailable(ProviderError):
    """Connection refused or reset, 5xx, overloaded: the target, not the request, is at fault."""

    retryable = True
    trips_breaker = True
    http_status = 503
    error_type = "service_unavailable"
    code = "upstream_unavailable"


class BadRequest(ProviderError):
    """The request itself is wrong; another target would refuse it too."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class ContextTooLong(BadRequest):
    code = "context_length_exceeded"


class AuthFailed(ProviderError):
    """The gateway's credentials for this target are wrong: an operator problem, so fail over."""

    trips_breaker = True
    http_status = 502
    error_type = "upstream_auth_error"
    code = "upstream_auth_failed"


def error_from_status(
    status: int, message: str, *, target: str = "", retry_after: float | None = None
) -> ProviderError:
    """Map an upstream HTTP status (and message) to the taxonomy; shared by every HTTP provider."""
    lowered = message.lower()
    if status == 429:
        return RateLimited(message, target=target, upstream_status=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthFailed(message, target=target, upstream_status=status)
    if status in (408, 504):
        return Timeout(message, target=target, upstream_status=status)
    if status == 400 or status == 413 or status == 422:
        if "context" in lowered and ("length" in lowered or "window" in lowered or "long" in lowered):
            return ContextTooLong(message, target=target, upstream_status=status)
        if status == 413 or "too long" in lowered or "maximum context" in lowered:
            return ContextTooLong(message, target=target, upstream_status=status)
        return BadRequest(message, target=target, upstream_status=status)
    if status == 404:
        return BadRequest(message, target=target, upstream_status=status)
    if 400 <= status < 500:
        return BadRequest(message, target=target, upstream_status=status)
    return Unavailable(message, target=target, upstream_status=status)


def sdk_kwargs(params: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """Keyword arguments for an official SDK's `create`: the parameters it declares, and the rest
    in `extra_body`, exactly as a direct SDK user would send them (instead of a TypeError)."""
    kwargs = {k: v for k, v in params.items() if k in known}
    extra = {k: v for k, v in params.items() if k not in known}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
