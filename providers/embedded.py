"""The bundled engine inside the gateway process: the embedded default.

With no configuration the gateway must answer on a fresh machine with no managed-API key, so a
`selfhost` target with an `embedded` block runs the engine in-process (its step loop on its own
thread) on a model directory, or on a bundled model fetched or built on first start into the
cache folder (`selfhost_engine/bundled.py`: SmolLM2-135M-Instruct, or the random `tiny-llama`).
In production the engine runs as its own process on GPU nodes and the policy points at it over
HTTP instead (`providers/selfhost.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from policies.schema import TargetSpec
from protocols.api import Api
from protocols.usage import usage_of
from providers.base import (
    BadRequest,
    Completion,
    ContextTooLong,
    Health,
    ProviderError,
    ProviderRequest,
    TokenCount,
    Unavailable,
)

log = logging.getLogger("gateway.embedded")


class EmbeddedEngineProvider:
    def __init__(self, name: str, spec: TargetSpec, cache_dir: str) -> None:
        assert spec.embedded is not None
        self.name = name
        self.spec = spec
        self.apis = frozenset({Api.CHAT, Api.COMPLETIONS})
        self._cache_dir = Path(cache_dir)
        self._engine = None
        self._loading: asyncio.Task | None = None
        self._error: str | None = None
        self._fallback = ""  # why the bundled model asked for is not the one served ("" when it is)

    def _load(self):
        from selfhost_engine import AsyncEngine
        from selfhost_engine.bundled import prepare

        embedded = self.spec.embedded
        model_dir = embedded.model_dir
        if model_dir is None:  # a bundled model, named by the target's `model`
            prepared = prepare(self.spec.model, self._cache_dir / "models")
            model_dir, self._fallback = str(prepared.path), prepared.fallback_reason
        config = {"max_num_seqs": embedded.max_num_seqs, "max_model_len": embedded.max_model_len}
        if embedded.num_blocks is not None:
            config["num_blocks"] = embedded.num_blocks
        log.info("loading the embedded engine from %s", model_dir)
        return AsyncEngine.from_model_dir(model_dir, served_model_name=self.spec.model, **config)

    def start(self) -> asyncio.Task:
        """Begin loading in a worker thread (idempotent); requests wait for it."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load_async())
        return self._loading

    async def _load_async(self) -> None:
        try:
            self._engine = await asyncio.to_thread(self._load)
        except Exception as exc:  # reported by health() and by every request
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("the embedded engine failed to load")

    async def _ready(self):
        if self._engine is None:
            await asyncio.shield(self.start())
        if self._engine is None:
            raise Unavailable(f"embedded engine unavailable: {self._error}", target=self.name)
        return self._engine

    def _map(self, exc: Exception) -> ProviderError:
        from selfhost_engine.errors import EngineRequestError, PromptTooLongError

        if isinstance(exc, PromptTooLongError):
            return ContextTooLong(exc.message, target=self.name)
        if isinstance(exc, EngineRequestError):
            return BadRequest(exc.message, target=self.name)
        return Unavailable(f"{type(exc).__name__}: {exc}", target=self.name)

    async def complete(self, request: ProviderRequest) -> Completion:
        from selfhost_engine import openai_api

        call = openai_api.chat_completion if request.api is Api.CHAT else openai_api.completion
        engine = await self._ready()
        try:
            document = await call(engine, request.body, request_id=request.request_id, tenant=request.tenant)
        except ProviderError:
            raise
        except Exception as exc:
            raise self._map(exc) from None
        body = msgspec.json.encode(document)
        return Completion(body=body, usage=usage_of(body))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        from selfhost_engine import openai_api

        call = openai_api.chat_completion_stream if request.api is Api.CHAT else openai_api.completion_stream
        engine = await self._ready()
        try:
            async for payload in call(
                engine, request.body, request_id=request.request_id, tenant=request.tenant
            ):
                yield payload
        except ProviderError:
            raise
        except Exception as exc:
            raise self._map(exc) from None

    async def count_tokens(self, request: ProviderRequest) -> TokenCount | None:
        """The served model's own tokenizer over its chat template: what the prompt will cost.
        Rendered and encoded in a worker thread: a long agent prompt takes milliseconds, which
        the event loop, serving every other request, must not spend."""
        if request.api is not Api.CHAT:
            return None
        from selfhost_engine.openai_api import prompt_token_count

        engine = await self._ready()
        try:
            return TokenCount(await asyncio.to_thread(prompt_token_count, engine, request.body), "tokenizer")
        except Exception as exc:
            raise self._map(exc) from None

    def load(self) -> dict | None:
        """The engine's live load (waiting, running, KV usage), for readiness and balancing."""
        if self._engine is None:
            return None
        from selfhost_engine.openai_api import load

        return load(self._engine)

    async def health(self) -> Health:
        if self._engine is not None:
            detail = "engine running" if self._engine.is_running else "engine stopped"
            if self._fallback:
                detail += f"; serving the random-weight demo model ({self._fallback})"
            return Health(self._engine.is_running, detail)
        return Health(False, self._error or "engine loading")

    async def aclose(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.shutdown)
