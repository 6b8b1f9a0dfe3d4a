"""The names of the protocols (APIs) callers and upstreams speak."""

from __future__ import annotations

from enum import StrEnum


class Api(StrEnum):
    CHAT = "openai.chat"  # POST /v1/chat/completions
    COMPLETIONS = "openai.completions"  # POST /v1/completions (legacy)
    EMBEDDINGS = "openai.embeddings"  # POST /v1/embeddings
    RESPONSES = "openai.responses"  # POST /v1/responses
    MESSAGES = "anthropic.messages"  # POST /v1/messages


# Where each protocol lives under an upstream's `/v1` base URL (for HTTP forwarders).
PATHS: dict[Api, str] = {
    Api.CHAT: "/chat/completions",
    Api.COMPLETIONS: "/completions",
    Api.EMBEDDINGS: "/embeddings",
    Api.RESPONSES: "/responses",
    Api.MESSAGES: "/messages",
}
