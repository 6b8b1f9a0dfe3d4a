"""Self-hosted, OpenAI-compatible servers: the bundled engine's server, vLLM, SGLang, ….

These upstreams already speak the gateway's wire format, so bodies pass through as bytes over a
pooled aiohttp session (the transport that measured fastest, see NOTES.md); only usage is peeked
at. One target may have several endpoints (replicas); the balancer picks one per request and
passes it in `ProviderRequest.endpoint`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from policies.schema import TargetSpec
from providers.base import Completion, Health, ProviderRequest, Timeout, Unavailable
from providers.openai_wire import sse_data, status_error, usage_of

_encode = msgspec.json.encode


class SelfHostProvider:
    """OpenAI-compatible HTTP upstream; `base_url`/`endpoints` end in `/v1`, like the SDK's."""

    def __init__(self, name: str, spec: TargetSpec, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.spec = spec
        self.endpoints = [e.rstrip("/") for e in (spec.endpoints or ([spec.base_url] if spec.base_url else []))]
        if not self.endpoints:
            raise ValueError(f"target {name!r}: a selfhost target needs base_url or endpoints")
        self._session = session
        self._headers = {"content-type": "application/json", **spec.headers}
        if spec.api_key_env and os.environ.get(spec.api_key_env):
            self._headers["authorization"] = f"Bearer {os.environ[spec.api_key_env]}"

    def _url(self, request: ProviderRequest, path: str) -> str:
        return (request.endpoint or self.endpoints[0]) + path

    def _timeout(self, request: ProviderRequest) -> aiohttp.ClientTimeout:
        # Total and first-token deadlines are enforced by the executor with asyncio timeouts.
        return aiohttp.ClientTimeout(total=None, sock_connect=request.timeouts.connect)

    async def complete(self, request: ProviderRequest) -> Completion:
        try:
            async with self._session.post(
                self._url(request, "/chat/completions"),
                data=_encode(request.body),
                headers=self._headers,
                timeout=self._timeout(request),
            ) as response:
                body = await response.read()
                if response.status >= 400:
                    raise status_error(response.status, body, response.headers, self.name)
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}", target=self.name) from None
        except asyncio.TimeoutError:
            raise Timeout("connect timed out", target=self.name) from None
        return Completion(body=body, usage=usage_of(body))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        try:
            response = await self._session.post(
                self._url(request, "/chat/completions"),
                data=_encode(request.body),
                headers=self._headers,
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
        """The session is shared and owned by the provider registry."""
