"""Self-hosted, OpenAI-compatible servers: the bundled engine's server, vLLM, SGLang, ….

These upstreams already speak the gateway's wire format, so bodies pass through as bytes over a
pooled aiohttp session (the transport that measured fastest, see NOTES.md); only usage is peeked
at. A target with several endpoints (replicas) owns a `Balancer`: `placement()` orders the
replicas for one request (prefix affinity, token-aware load, health), the pipeline turns them
into candidates, and each call reports its tokens in flight and its outcome to the balancer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from policies.schema import BalancerSpec, TargetSpec
from protocols.api import PATHS, Api
from protocols.sse import sse_data
from protocols.usage import usage_of
from providers.balancer import Balancer
from providers.base import Completion, Health, ProviderError, ProviderRequest, Timeout, Unavailable
from providers.upstream_errors import status_error

_encode = msgspec.json.encode
DEFAULT_APIS = frozenset({Api.CHAT, Api.COMPLETIONS, Api.EMBEDDINGS})


class SelfHostProvider:
    """OpenAI-compatible HTTP upstream; `base_url`/`endpoints` end in `/v1`, like the SDK's."""

    def __init__(
        self, name: str, spec: TargetSpec, session: aiohttp.ClientSession, balancing: BalancerSpec | None = None
    ) -> None:
        self.name = name
        self.spec = spec
        # OpenAI-compatible servers (the bundled engine, vLLM, SGLang) speak these; a policy may
        # narrow or widen the list with `apis`.
        self.apis = frozenset(Api(a) for a in spec.apis) if spec.apis else DEFAULT_APIS
        self.endpoints = [e.rstrip("/") for e in (spec.endpoints or ([spec.base_url] if spec.base_url else []))]
        if not self.endpoints:
            raise ValueError(f"target {name!r}: a selfhost target needs base_url or endpoints")
        self._session = session
        self.balancing = balancing
        self.balancer: Balancer | None = None
        if len(self.endpoints) > 1:
            b = balancing or BalancerSpec()
            self.balancer = Balancer(
                self.endpoints, session, poll_interval=b.poll_interval, unhealthy_after=b.unhealthy_after,
                healthy_after=b.healthy_after, load_factor=b.load_factor, deep_check=b.deep_check,
                deep_model=spec.model,
            )
        self._headers = {"content-type": "application/json", **spec.headers}
        if spec.api_key_env and os.environ.get(spec.api_key_env):
            self._headers["authorization"] = f"Bearer {os.environ[spec.api_key_env]}"

    def placement(self, prefix_key: str | None, tokens: int) -> list[str]:
        """Replicas in the order to try them: the balancer's choice, then the rest by preference."""
        if self.balancer is None:
            return self.endpoints
        first = self.balancer.choose(prefix_key, tokens)
        rest = [s.url for s in self.balancer.preference(prefix_key or "", list(self.balancer.states.values()))
                if s.url != first]
        rest.sort(key=lambda url: not self.balancer.states[url].healthy)  # healthy replicas first
        return [first, *rest]

    def start(self) -> None:
        if self.balancer is not None:
            asyncio.get_running_loop().create_task(self.balancer.start())

    def _url(self, request: ProviderRequest, path: str) -> str:
        return (request.endpoint or self.endpoints[0]) + path

    def _begin(self, request: ProviderRequest) -> tuple[str | None, int]:
        if self.balancer is None or request.endpoint not in self.balancer.states:
            return None, 0
        tokens = int(request.body.get("max_tokens") or request.body.get("max_completion_tokens") or 0)
        self.balancer.started(request.endpoint, tokens)
        return request.endpoint, tokens

    def _end(self, endpoint: str | None, tokens: int, error: BaseException | None) -> None:
        if endpoint is None:
            return
        self.balancer.finished(endpoint, tokens)
        if isinstance(error, ProviderError) and error.trips_breaker:
            self.balancer.mark_failure(endpoint)
        elif error is None:
            self.balancer.mark_success(endpoint)

    def _timeout(self, request: ProviderRequest) -> aiohttp.ClientTimeout:
        # Total and first-token deadlines are enforced by the executor with asyncio timeouts.
        return aiohttp.ClientTimeout(total=None, sock_connect=request.timeouts.connect)

    async def complete(self, request: ProviderRequest) -> Completion:
        endpoint, tokens = self._begin(request)
        error: BaseException | None = None
        try:
            return await self._complete(request)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(endpoint, tokens, error)

    async def _complete(self, request: ProviderRequest) -> Completion:
        """The response must start within `first_token` (a hung upstream fails over then, not
        after `total`); the body may take the rest of `total` (the executor's deadline)."""
        t = request.timeouts
        try:
            async with asyncio.timeout(min(t.first_token, t.total)):
                response = await self._session.post(
                    self._url(request, PATHS[request.api]),
                    data=_encode(request.body),
                    headers={**self._headers, **request.forward_headers} if request.forward_headers else self._headers,
                    timeout=self._timeout(request),
                )
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}", target=self.name) from None
        except asyncio.TimeoutError:
            raise Timeout("no response within the first-token deadline", target=self.name) from None
        try:
            body = await response.read()
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}", target=self.name) from None
        finally:
            response.release()
        if response.status >= 400:
            raise status_error(response.status, body, response.headers, self.name)
        return Completion(body=body, usage=usage_of(body))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        endpoint, tokens = self._begin(request)
        error: BaseException | None = None
        try:
            async for payload in self._stream(request):
                yield payload
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(endpoint, tokens, error if not isinstance(error, GeneratorExit) else None)

    async def _stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        try:
            response = await self._session.post(
                self._url(request, PATHS[request.api]),
                data=_encode(request.body),
                headers={**self._headers, **request.forward_headers} if request.forward_headers else self._headers,
                timeout=self._timeout(request),
            )
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}", target=self.name) from None
        except asyncio.TimeoutError:
            raise Timeout("connect timed out", target=self.name) from None
        try:
            if response.status >= 400:
                raise status_error(response.status, await response.read(), response.headers, self.name)
            try:
                async for payload in sse_data(response.content):
                    yield payload
            except aiohttp.ClientError as exc:
                raise Unavailable(f"stream broke: {type(exc).__name__}: {exc}", target=self.name) from None
        finally:
            # Returns a fully read connection to the pool; closes one abandoned mid-stream.
            response.release()

    async def health(self) -> Health:
        try:
            async with self._session.get(
                self.endpoints[0] + "/models", headers=self._headers, timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                return Health(response.status < 500, f"HTTP {response.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return Health(False, f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        """Stops the balancer's health checks; the session is shared and owned by the registry."""
        if self.balancer is not None:
            await self.balancer.stop()
