"""Anthropic Messages API targets, through the official `anthropic` SDK.

This provider speaks Anthropic's protocol only (`apis = {MESSAGES}`): a Messages body goes up
verbatim (unknown fields in `extra_body`, as a direct SDK user would send them) and the response
comes back as the upstream's bytes, the stream as its event payloads, relayed one for one.
OpenAI-shaped callers reach it through `protocols/anthropic_chat.py` (see `providers/translated.py`).
Every SDK failure is mapped to the taxonomy of `providers.base` here, once, including `error`
events inside a 200 stream, so the executor never sees an `anthropic` exception.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import msgspec
from anthropic import AsyncAnthropic

from policies.schema import TargetSpec
from protocols.anthropic_messages import usage_of
from protocols.api import Api
from protocols.sse import sse_data
from providers.base import (
    AuthFailed,
    BadRequest,
    Completion,
    Health,
    ProviderError,
    ProviderRequest,
    Timeout,
    TokenCount,
    Timeouts,
    Unavailable,
    error_from_status,
    parse_retry_after,
    sdk_kwargs,
)

__all__ = ["AnthropicProvider", "map_error"]

# Anthropic error `type` → the HTTP status it is documented with. Needed for `error` events inside
# a 200 stream, where the SDK's exception carries status 200 and only the body says what failed.
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class _EventPeek(msgspec.Struct):
    type: str = ""
    error: dict[str, Any] | None = None


_event_decoder = msgspec.json.Decoder(_EventPeek)


def stream_error(error: dict[str, Any] | None, target: str) -> ProviderError:
    """An `error` event inside a 200 stream: its type says what failed."""
    error = error or {}
    kind = str(error.get("type") or "api_error")
    status = ERROR_TYPE_STATUS.get(kind, 500)
    return error_from_status(status, f"anthropic {status} {kind}: {error.get('message') or 'stream error'}", target=target)


def map_error(exc: BaseException, target: str) -> ProviderError:
    """One place that knows the SDK's exceptions; everything else sees the taxonomy only."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, (TimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)):
        return Timeout(f"anthropic: timed out ({type(exc).__name__})", target=target)
    if isinstance(exc, anthropic.APIStatusError):
        message = exc.api_message or str(exc)
        status = exc.status_code
        if status < 400:  # an `error` event inside a 200 stream: the body's type says what failed
            status = ERROR_TYPE_STATUS.get(exc.type or "", 500)
        retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        label = f"anthropic {status} {exc.type}" if exc.type else f"anthropic {status}"
        error = error_from_status(status, f"{label}: {message}", target=target, retry_after=retry_after)
        if isinstance(error, BadRequest):  # the caller's own 400: Anthropic's words, unchanged
            error = type(error)(message, target=target, upstream_status=status)
        return error
    if isinstance(exc, (anthropic.APIConnectionError, httpx2.TransportError)):
        return Unavailable(f"anthropic: connection failed ({exc})", target=target)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return Unavailable(f"anthropic: malformed upstream response ({exc})", target=target)
    return Unavailable(f"anthropic: unexpected {type(exc).__name__}: {exc}", target=target)


# Keyword arguments `messages.create` declares. SDK 2.x dropped `temperature`/`top_p` from its
# signature (recent models ignore or refuse them); the wire protocol still carries them, so any
# translated field the SDK does not declare travels in `extra_body` instead of raising TypeError.
_SDK_PARAMS = frozenset(inspect.signature(anthropic.resources.messages.AsyncMessages.create).parameters) - {"self"}


def _sdk_timeout(timeouts: Timeouts, *, stream: bool) -> httpx2.Timeout:
    """Per-read timeout: the response (streamed or not) must show life within `first_token`, so a
    hung target fails over then; `total` is enforced around the whole call."""
    read = min(timeouts.first_token, timeouts.total)
    return httpx2.Timeout(connect=timeouts.connect, read=read, write=read, pool=timeouts.connect)


DEFAULT_MAX_TOKENS = 4096
API_VERSION = "2023-06-01"


def _passthrough(name: str, spec: TargetSpec, session: aiohttp.ClientSession):
    """`transport: passthrough`: bytes over the pooled aiohttp session, Anthropic's auth headers,
    no SDK on the hot path (its request building costs ~2 ms a call, see bench/gateway_overhead.py).
    Callers' `anthropic-version` / `anthropic-beta` headers override the defaults per request."""
    from providers.selfhost import SelfHostProvider

    key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
    base = (spec.base_url or "https://api.anthropic.com").rstrip("/") + "/v1"
    headers = {**spec.headers, "x-api-key": key, "anthropic-version": API_VERSION}
    forward_spec = msgspec.structs.replace(spec, base_url=base, endpoints=[], api_key_env=None, headers=headers,
                                           apis=["anthropic.messages"])
    return SelfHostProvider(name, forward_spec, session)


class AnthropicProvider:
    """One Anthropic target. Safe to share: the SDK client and its httpx2 pool are concurrency-safe.

    `http_client` is the gateway's shared pool. It must be an `httpx2.AsyncClient`: anthropic SDK 2.x
    is built on `httpx2` and refuses `httpx` objects. Without one, the provider owns a private pool.
    """

    def __init__(
        self,
        name: str,
        spec: TargetSpec,
        http_client: httpx2.AsyncClient | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self._forward = None
        if spec.transport == "passthrough" and session is not None:
            self._forward = _passthrough(name, spec, session)
        self.apis = frozenset({Api.MESSAGES})
        self._api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        self._owns_client = http_client is None
        self._http = http_client or httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=512, max_keepalive_connections=64),
            timeout=httpx2.Timeout(spec.timeouts.total, connect=spec.timeouts.connect),
        )
        self._client = AsyncAnthropic(
            # A placeholder keeps the SDK from hunting for credentials elsewhere; calls without a
            # configured key are refused before any network traffic (see `_require_key`).
            api_key=self._api_key or "unconfigured",
            base_url=spec.base_url,
            max_retries=0,  # retries belong to the executor, which knows the whole plan
            http_client=self._http,
            default_headers=dict(spec.headers) or None,
        )

    def _require_key(self) -> None:
        if not self._api_key:
            raise AuthFailed(f"no Anthropic API key: environment variable {self.spec.api_key_env!r} is unset",
                             target=self.name)

    def _params(self, request: ProviderRequest) -> dict[str, Any]:
        body = {**request.body, "model": request.body.get("model") or self.spec.model}
        body.pop("stream", None)
        if "max_tokens" not in body:
            body["max_tokens"] = self.spec.max_output_tokens or DEFAULT_MAX_TOKENS
        return sdk_kwargs(body, _SDK_PARAMS)

    async def complete(self, request: ProviderRequest) -> Completion:
        self._require_key()
        if self._forward is not None:
            completion = await self._forward.complete(request)
            return Completion(completion.body, usage_of(completion.body))
        params = self._params(request)
        try:
            async with asyncio.timeout(request.timeouts.total):
                raw = await self._client.messages.with_raw_response.create(
                    **params, timeout=_sdk_timeout(request.timeouts, stream=False),
                    extra_headers=request.forward_headers or None,
                )
                body = await raw.read()
        except Exception as exc:
            raise map_error(exc, self.name) from exc
        return Completion(body=body, usage=usage_of(body))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        """Yields the upstream's event payloads; an `error` event raises its taxonomy error, and
        a stream that ends before `message_stop` raises `Unavailable` (never a silent cut)."""
        self._require_key()
        if self._forward is not None:
            async for payload in self._passthrough_stream(request):
                yield payload
            return
        params = self._params(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeouts.total
        context = self._client.messages.with_streaming_response.create(
            **params, stream=True, timeout=_sdk_timeout(request.timeouts, stream=True),
            extra_headers=request.forward_headers or None,
        )
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + request.timeouts.first_token)):
                response = await context.__aenter__()
        except Exception as exc:
            raise map_error(exc, self.name) from exc
        try:
            lines = (line.encode() + b"\n" async for line in response.iter_lines())
            payloads = sse_data(lines)
            finished = False
            while not finished:
                try:
                    async with asyncio.timeout_at(deadline):
                        payload = await anext(payloads)
                except StopAsyncIteration:
                    raise Unavailable("anthropic: stream ended before message_stop", target=self.name) from None
                except Exception as exc:
                    raise map_error(exc, self.name) from exc
                event = _event_decoder.decode(payload)
                if event.type == "error":
                    raise stream_error(event.error, self.name)
                finished = event.type == "message_stop"
                yield payload
        finally:
            await context.__aexit__(None, None, None)

    async def _passthrough_stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        """The forwarded stream, with `error` events raised like the SDK path raises them."""
        async for payload in self._forward.stream(request):
            event = _event_decoder.decode(payload)
            if event.type == "error":
                raise stream_error(event.error, self.name)
            yield payload

    async def count_tokens(self, request: ProviderRequest) -> TokenCount | None:
        """Anthropic's own count (`POST /v1/messages/count_tokens`): exact, and free."""
        self._require_key()
        body = {k: v for k, v in request.body.items() if k not in ("max_tokens", "stream", "temperature", "top_p",
                                                                    "top_k", "stop_sequences", "metadata")}
        body["model"] = body.get("model") or self.spec.model
        known = frozenset(inspect.signature(anthropic.resources.messages.AsyncMessages.count_tokens).parameters)
        try:
            async with asyncio.timeout(request.timeouts.total):
                counted = await self._client.messages.count_tokens(
                    **sdk_kwargs(body, known - {"self"}), extra_headers=request.forward_headers or None)
        except Exception as exc:
            raise map_error(exc, self.name) from exc
        return TokenCount(counted.input_tokens, "upstream")

    async def health(self) -> Health:
        """Cheap on purpose: probing the model would spend tokens; real failures trip the breaker."""
        if not self._api_key:
            return Health(ok=False, detail=f"environment variable {self.spec.api_key_env!r} is unset")
        return Health(ok=True, detail="api key configured")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()
