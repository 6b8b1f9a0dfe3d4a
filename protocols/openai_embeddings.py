"""OpenAI Embeddings (`POST /v1/embeddings`): text (or token ids) in, vectors out; never streamed.

Budgets count input tokens only. `encoding_format: base64` packs each vector as little-endian
float32 bytes, as OpenAI does (the official SDKs request it by default and decode it).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta, Struct

from protocols.api import Api
from protocols.errors import bad_request
from protocols.openai_completions import prompts
from protocols.text import estimate_tokens
from protocols.openai_common import OpenAIWire
from protocols.wire import Inbound, Peek, answer_check, convert, decode_json

MAX_INPUTS = 2048  # OpenAI's documented limit on inputs per request

TokenIds = list[Annotated[int, Meta(ge=0)]]


class EmbeddingRequest(Struct, kw_only=True, omit_defaults=True):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    input: str | list[str | Annotated[int, Meta(ge=0)] | TokenIds]  # one kind per list: see `inputs`
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


def inputs(value: Any) -> list[str | list[int]]:
    return prompts(value, "input")


def encode_vector(vector: Sequence[float] | np.ndarray, encoding: str | None) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def response(vectors: np.ndarray, model: str, prompt_tokens: int, encoding: str | None) -> bytes:
    """An OpenAI `list` of `embedding` objects with usage."""
    data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding)} for i, v in enumerate(vectors)]
    return msgspec.json.encode({"object": "list", "data": data, "model": model,
                                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})


class EmbeddingsWire(OpenAIWire):
    api = Api.EMBEDDINGS
    cacheable_streams = False
    check = staticmethod(answer_check("data"))

    def decode(self, raw: bytes) -> Inbound:
        body = decode_json(raw)
        view = convert(body, EmbeddingRequest)
        batch = inputs(view.input)
        if not batch or any(not item for item in batch):
            raise bad_request("'input' must be a non-empty string, or a non-empty list of them.", param="input")
        if len(batch) > MAX_INPUTS:
            raise bad_request(f"Too many inputs: {len(batch)}; the maximum is {MAX_INPUTS}.", param="input",
                              code="too_many_inputs")
        text = "\n".join(item for item in batch if isinstance(item, str))
        return Inbound(
            api=self.api, body=body, view=view, model=view.model, output_cap=0, default_output=0,
            messages=0, prompt_tokens=estimate_tokens(batch),
            conversation={"messages": [{"role": "user", "content": text}]},
        )



    def peek(self, payload: bytes) -> Peek:
        return Peek()



    def replay(self, body: bytes, include_usage: bool) -> list[bytes]:
        return [body]

    def assemble(self, payloads: list[bytes]) -> bytes | None:
        return None


WIRE = EmbeddingsWire()

__all__ = ["WIRE", "EmbeddingRequest", "encode_vector", "inputs", "response"]
