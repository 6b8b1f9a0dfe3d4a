"""Token usage, and cheap peeks at the usage an upstream reports.

Bodies are passed through as bytes; only the few fields the gateway needs are decoded, with
msgspec structs that skip everything else, so the hot path never builds objects for content it
does not look at.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec


@dataclass(slots=True)
class Usage:
    """Token usage as OpenAI reports it; `cached_tokens` is the cached share of `prompt_tokens`.

    `cache_write_tokens` is the share of `prompt_tokens` written to a provider-side prompt cache
    (Anthropic's `cache_creation_input_tokens`), priced at its own rate.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None
    cache_creation_tokens: int | None = None  # cache writes, as OpenAI-compatible gateways report them


class UsagePeek(msgspec.Struct):
    """OpenAI's `usage` object (chat, completions and embeddings share it). The Responses API
    names the same counts `input_tokens` / `output_tokens` / `input_tokens_details`: read both,
    so every provider's `usage_of` settles a Responses body on its real numbers."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: _PromptDetails | None = None


class _BodyPeek(msgspec.Struct):
    usage: UsagePeek | None = None


_body_decoder = msgspec.json.Decoder(_BodyPeek)


def to_usage(peek: UsagePeek | None) -> Usage | None:
    if peek is None:
        return None
    details = peek.prompt_tokens_details or peek.input_tokens_details
    cached = details.cached_tokens if details else None
    written = details.cache_creation_tokens if details else None
    return Usage(peek.prompt_tokens or peek.input_tokens, peek.completion_tokens or peek.output_tokens, cached or 0,
                 written or 0)


def usage_of(body: bytes) -> Usage:
    """Usage of an OpenAI response body; zeros when the upstream did not report it."""
    try:
        return to_usage(_body_decoder.decode(body).usage) or Usage()
    except msgspec.DecodeError:
        return Usage()


def merge(earlier: Usage | None, later: Usage) -> Usage:
    """Usage reported in several events of one stream (Anthropic: input in `message_start`,
    output in `message_delta`): counts are cumulative, so the larger of each wins."""
    if earlier is None:
        return later
    return Usage(max(earlier.prompt_tokens, later.prompt_tokens), max(earlier.completion_tokens, later.completion_tokens),
                 max(earlier.cached_tokens, later.cached_tokens), max(earlier.cache_write_tokens, later.cache_write_tokens))
