"""Every wire format the gateway speaks, and the translations between them.

This package sits at the bottom of the import graph: `gateway`, `providers`, `cache` and
`selfhost_engine` import it; it imports none of them. One module per protocol
(`openai_chat`, `openai_completions`, `openai_embeddings`, ...) plus shared pieces: `errors`
(error bodies per protocol), `sse` (framing and parsing), `usage` (token usage and its peeks),
`text` (text extraction and the one token estimator), `wire` (the per-protocol descriptor the
pipeline works with) and `translate` (request/response/stream translators between protocols).
"""

from protocols.api import Api

__all__ = ["Api"]
