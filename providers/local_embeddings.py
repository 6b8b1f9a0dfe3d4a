"""The bundled embedding target: the offline MiniLM sentence-embedding model, in process.

So that the embedded default serves `/v1/embeddings` (public model `local-embed`) out of the box,
with no download and no managed-API key. It shares the process-wide MiniLM with the semantic
cache and the difficulty scorer (`cache.embedder.get_embedder()`), so it costs no extra memory.
Vectors are 384-dimensional and L2-normalised; `dimensions` other than 384 is refused (the model
was not trained to be truncated), token-id inputs too (they would be another tokenizer's ids).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from policies.schema import TargetSpec
from protocols import openai_embeddings
from protocols.api import Api
from providers.base import BadRequest, Completion, Health, ProviderRequest, Unavailable, Usage

MAX_BATCH = 256  # inputs embedded per forward pass


class LocalEmbeddingsProvider:
    def __init__(self, name: str, spec: TargetSpec) -> None:
        from cache.embedder import get_embedder

        self.name = name
        self.spec = spec
        self.apis = frozenset({Api.EMBEDDINGS})
        self.embedder = get_embedder()

    def start(self) -> None:
        """Load the model off the request path."""
        asyncio.get_running_loop().run_in_executor(None, self.embedder.load)

    def _texts(self, request: ProviderRequest) -> list[str]:
        items = openai_embeddings.inputs(request.body.get("input"))
        if not all(isinstance(item, str) for item in items):
            raise BadRequest(f"target '{self.name}' embeds text only; token-id input is not supported",
                             target=self.name)
        dimensions = request.body.get("dimensions")
        if dimensions is not None and dimensions != self.embedder.dim:
            raise BadRequest(f"target '{self.name}' returns {self.embedder.dim}-dimensional vectors; "
                             f"dimensions={dimensions} is not supported", target=self.name)
        return items

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        vectors = np.concatenate([self.embedder.embed(texts[i : i + MAX_BATCH]) for i in range(0, len(texts), MAX_BATCH)])
        tokens = sum(self.embedder.token_counts(texts))
        return vectors, tokens

    async def complete(self, request: ProviderRequest) -> Completion:
        texts = self._texts(request)
        try:
            vectors, tokens = await asyncio.to_thread(self._embed, texts)
        except Exception as exc:  # the model failed to load or run: the target, not the request
            raise Unavailable(f"local embeddings failed: {type(exc).__name__}: {exc}", target=self.name) from None
        body = openai_embeddings.response(vectors, self.spec.model, tokens, request.body.get("encoding_format"))
        return Completion(body=body, usage=Usage(prompt_tokens=tokens))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        raise BadRequest("embeddings are never streamed", target=self.name)
        yield b""  # pragma: no cover - makes this an async generator

    async def health(self) -> Health:
        return Health(True, "model loaded" if self.embedder.loaded else "model loads on first use")

    async def aclose(self) -> None:
        """The embedder is process-wide and shared."""
