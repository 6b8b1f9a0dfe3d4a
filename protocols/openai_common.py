"""What OpenAI's chat, completions and embeddings wires share: forwarding, usage, SSE framing."""

from __future__ import annotations

from typing import Any

from protocols.errors import error_body
from protocols.sse import DONE, sse
from protocols.usage import Usage, usage_of
from protocols.wire import Inbound


class OpenAIWire:
    done = DONE
    requires_final = False  # OpenAI streams end with `[DONE]`; a cut shows as a broken connection

    def prepare(self, inbound: Inbound, upstream_model: str, max_output: int | None) -> dict[str, Any]:
        body = dict(inbound.body)
        body["model"] = upstream_model
        if inbound.output_cap is None and max_output is not None:
            body["max_tokens"] = max_output // inbound.n
        if inbound.stream:
            # Always ask for usage: budgets settle on real numbers. The relay hides the chunk
            # from callers that did not ask for it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    def usage(self, body: bytes) -> Usage:
        return usage_of(body)

    def frame(self, payload: bytes) -> bytes:
        return sse(payload)

    def error_frame(self, message: str, type: str, code: str | None) -> bytes:
        return sse(error_body(message, type=type, code=code))
