"""A provider seen through a translator: callers speak one protocol, the upstream another.

The pipeline (through the router's candidates) asks `speaking(provider, api)` for a provider that
speaks the caller's protocol: the provider itself when it speaks it natively (verbatim relay, so
nothing the caller sent is lost), else this adapter around a translator from `protocols/`, else
None (the target cannot serve that protocol at all).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from protocols import translate
from protocols.api import Api
from protocols.errors import Untranslatable, UpstreamStreamError
from protocols.fidelity import Report
from protocols.translate import Hints, Translator
from providers.base import (
    BadRequest,
    Completion,
    Health,
    Provider,
    ProviderError,
    ProviderRequest,
    TokenCount,
    TokenCounter,
    Unavailable,
)


class Translated:
    """Speaks `translator.source` to the caller and `translator.target` to `inner`."""

    def __init__(self, inner: Provider, translator: Translator, hints: Hints) -> None:
        self.inner = inner
        self.translator = translator
        self.hints = hints
        self.name = inner.name
        self.spec = getattr(inner, "spec", None)
        self.apis = frozenset({translator.source})

    def _request(self, request: ProviderRequest) -> ProviderRequest:
        hints = replace(self.hints, cache_prefix=request.prefix_key is not None)
        try:
            body = translate.translation(self.translator, request.body, hints).body
        except Untranslatable as exc:
            raise BadRequest(str(exc), target=self.name) from None
        return replace(request, body=body, api=self.translator.target)

    def report(self, body: dict) -> Report:
        """What this target is not told as the caller said it (`x-gateway-dropped` / `-mapped`),
        from the same translation that built the upstream request (run again: the provider is
        shared by every request, so it keeps nothing per request)."""
        try:
            return translate.translation(self.translator, body, self.hints).report
        except Untranslatable:
            return Report()

    async def complete(self, request: ProviderRequest) -> Completion:
        completion = await self.inner.complete(self._request(request))
        try:
            body, usage = self.translator.response(completion.body)
        except Exception as exc:  # a body we cannot read is the upstream's fault: fail over
            raise Unavailable(f"unreadable upstream answer: {type(exc).__name__}: {exc}", target=self.name) from None
        return Completion(body=body, usage=usage)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        outbound = self._request(request)
        prompt_tokens = await self._prompt_count(outbound) if self.translator.wants_prompt_count else None
        upstream = self.inner.stream(outbound)
        translated = self.translator.stream(upstream, prompt_tokens=prompt_tokens)
        try:
            async for payload in translated:
                yield payload
        except ProviderError:
            raise
        except UpstreamStreamError as exc:
            raise Unavailable(f"upstream stream error ({exc.kind}): {exc.message}", target=self.name) from None
        except (EOFError, ValueError) as exc:
            raise Unavailable(f"upstream stream broke: {exc}", target=self.name) from None
        finally:
            await translated.aclose()
            await upstream.aclose()

    async def _prompt_count(self, outbound: ProviderRequest) -> int | None:
        """The target's exact count of the translated prompt, when it can count (a stream's first
        event states it); a count that fails costs the caller nothing but the number."""
        if not isinstance(self.inner, TokenCounter):
            return None
        try:
            count = await self.inner.count_tokens(outbound)
        except Exception:
            return None
        return count.tokens if count is not None else None

    async def count_tokens(self, request: ProviderRequest) -> TokenCount | None:
        """The inner provider's count of the translated request, when it can count."""
        if not isinstance(self.inner, TokenCounter):
            return None
        return await self.inner.count_tokens(self._request(request))

    async def health(self) -> Health:
        return await self.inner.health()

    async def aclose(self) -> None:
        """The inner provider belongs to the registry, which closes it."""

    def __getattr__(self, name: str):  # placement, load, start: the inner provider's
        return getattr(self.inner, name)


def speaking(provider: Provider, api: Api, hints: Hints | None = None) -> Provider | None:
    """`provider` itself if it speaks `api`, a translating view if one exists, else None."""
    if api in provider.apis:
        return provider
    translator = translate.find(api, provider.apis)
    if translator is None:
        return None
    return Translated(provider, translator, hints or Hints())
