"""OpenAI and Azure OpenAI through the official `openai` SDK.

The SDK is the reference for OpenAI's wire format, auth and Azure's URL scheme. We call it with
`max_retries=0` (the executor owns retries) over one shared aiohttp-backed client (the SDKs are built on `httpx2`), and ask for
raw responses so bodies are passed through as bytes instead of being parsed into SDK objects.
Fields the SDK does not name travel in `extra_body`, exactly as a direct SDK user would send them.

`transport: passthrough` (OpenAI, not Azure) skips the SDK on the hot path and forwards bytes like
the self-hosted provider does, with the same `Authorization: Bearer` key: the SDK's request
building costs ~2 ms per call on this hardware (see bench/gateway_overhead.py).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import msgspec
import openai
from openai.resources.chat.completions import AsyncCompletions as AsyncChatCompletions
from openai.resources.completions import AsyncCompletions
from openai.resources.embeddings import AsyncEmbeddings
from openai.resources.responses import AsyncResponses

from policies.schema import TargetSpec
from protocols.api import Api
from protocols.sse import sse_data
from protocols.usage import usage_of
from providers.base import Completion, Health, ProviderError, ProviderRequest, Timeout, Unavailable, sdk_kwargs
from providers.upstream_errors import status_error


def _params(create) -> frozenset[str]:
    return frozenset(inspect.signature(create).parameters) - {"self", "extra_headers", "extra_query", "extra_body", "timeout"}


# Each protocol: the SDK resource that speaks it, and the keyword arguments its `create` declares.
_RESOURCES = {
    Api.CHAT: (lambda client: client.chat.completions, _params(AsyncChatCompletions.create)),
    Api.COMPLETIONS: (lambda client: client.completions, _params(AsyncCompletions.create)),
    Api.EMBEDDINGS: (lambda client: client.embeddings, _params(AsyncEmbeddings.create)),
    Api.RESPONSES: (lambda client: client.responses, _params(AsyncResponses.create)),
}
# Azure OpenAI serves the Responses API under another URL scheme and version; not offered there yet.
_AZURE_APIS = frozenset({Api.CHAT, Api.COMPLETIONS, Api.EMBEDDINGS})


def _map_error(exc: Exception, target: str) -> ProviderError:
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, exc.response.content, exc.response.headers, target)
    if isinstance(exc, openai.APITimeoutError):
        return Timeout(str(exc), target=target)
    return Unavailable(f"{type(exc).__name__}: {exc}", target=target)


class OpenAIProvider:
    def __init__(
        self, name: str, spec: TargetSpec, http_client: httpx2.AsyncClient, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.name = name
        self.spec = spec
        self.apis = _AZURE_APIS if spec.provider == "azure" else frozenset(_RESOURCES)
        self._forward = None
        if spec.transport == "passthrough" and spec.provider == "openai" and session is not None:
            from providers.selfhost import SelfHostProvider

            base = spec.base_url or "https://api.openai.com/v1"
            self._forward = SelfHostProvider(name, msgspec.structs.replace(spec, base_url=base, endpoints=[]), session)
        api_key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        common = dict(api_key=api_key or "missing", max_retries=0, http_client=http_client,
                      default_headers=spec.headers or None)
        if spec.provider == "azure":
            self.client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
                azure_endpoint=spec.base_url or "", api_version=spec.api_version or "2024-10-21", **common
            )
        else:
            self.client = openai.AsyncOpenAI(base_url=spec.base_url or "https://api.openai.com/v1", **common)
        self.has_key = bool(api_key)

    def _call(self, request: ProviderRequest):
        """The SDK resource for the request's protocol, and the keyword arguments for its `create`."""
        resource, known = _RESOURCES[request.api]
        kwargs = sdk_kwargs(self._hinted(request).body, known)
        t = request.timeouts
        # `read` bounds the wait for each byte, the first included: a hung upstream fails over
        # after `first_token`, streamed or not; `total` is the executor's deadline.
        kwargs["timeout"] = httpx2.Timeout(t.total, connect=t.connect, read=min(t.first_token, t.total))
        if request.forward_headers:  # the caller's headers, for a target speaking its protocol
            kwargs["extra_headers"] = request.forward_headers
        return resource(self.client), kwargs

    def _hinted(self, request: ProviderRequest) -> ProviderRequest:
        if request.prefix_key and request.api in (Api.CHAT, Api.RESPONSES) and "prompt_cache_key" not in request.body:
            request.body = {**request.body, "prompt_cache_key": request.prefix_key}
        return request

    async def complete(self, request: ProviderRequest) -> Completion:
        if self._forward is not None:
            return await self._forward.complete(self._hinted(request))
        resource, kwargs = self._call(request)
        try:
            raw = await resource.with_raw_response.create(**kwargs)
            body = raw.content
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise _map_error(exc, self.name) from None
        return Completion(body=body, usage=usage_of(body))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        if self._forward is not None:
            async for payload in self._forward.stream(self._hinted(request)):
                yield payload
            return
        resource, kwargs = self._call(request)
        try:
            context = resource.with_streaming_response.create(**kwargs)
            response = await context.__aenter__()
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise _map_error(exc, self.name) from None
        try:
            lines = (line.encode() + b"\n" async for line in response.iter_lines())
            async for payload in sse_data(lines):
                yield payload
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise _map_error(exc, self.name) from None
        finally:
            await context.__aexit__(None, None, None)

    async def health(self) -> Health:
        return Health(self.has_key, "" if self.has_key else f"{self.spec.api_key_env or 'api key'} is not set")

    async def aclose(self) -> None:
        """The HTTP client is shared and owned by the provider registry."""
