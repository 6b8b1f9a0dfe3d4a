"""Translators between protocols: how a request in the caller's protocol reaches an upstream that
speaks another, and how its answer (body or stream) comes back.

Only used when the target does not speak the caller's protocol natively; otherwise the body and
the stream are relayed verbatim (see `Provider.apis`). A translator works on plain JSON values
and bytes; raising `Untranslatable` means "refuse with a 400", never a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import msgspec

from protocols import anthropic_chat, fidelity
from protocols.api import Api
from protocols.errors import UpstreamStreamError, translating
from protocols.messages_chat import MessagesToChat
from protocols.responses_chat import ResponsesToChat
from protocols.usage import Usage


@dataclass(slots=True)
class Hints:
    """What a translator may use besides the body (from the target and the pipeline)."""

    default_max_tokens: int = anthropic_chat.DEFAULT_MAX_TOKENS
    cache_prefix: bool = False
    min_cache_chars: int = anthropic_chat.DEFAULT_MIN_CACHE_CHARS
    # The chat body is a pivot another hop translates onward (Responses → Chat → Messages), not
    # what a chat upstream receives: content only chat upstreams cannot take (images in tool
    # results) stays in it for the next hop to carry.
    pivot: bool = False


class Translator(Protocol):
    source: Api
    target: Api
    # Names the next hop of a chain reports in pivot (chat) terms → the same field in this
    # translator's source terms (e.g. `image_url.detail` → `input_image.detail`).
    pivot_names: Mapping[str, str]
    # Whether `stream` can use the gateway's exact count of the prompt (its first event states it).
    wants_prompt_count: bool

    def request(self, body: dict[str, Any], hints: Hints) -> dict[str, Any]:
        """The target's body; what it drops or maps nested fields it reports to `protocols.fidelity`."""
        ...

    def response(self, body: bytes) -> tuple[bytes, Usage]: ...

    def stream(self, payloads: AsyncIterator[bytes], *, prompt_tokens: int | None = None) -> AsyncIterator[bytes]: ...

    def dropped(self, body: dict[str, Any]) -> list[str]:
        """Top-level fields the caller sent that the target will not see."""
        ...


@dataclass(slots=True)
class Translation:
    body: dict[str, Any]
    report: fidelity.Report


def _hop(translator: Translator, body: dict[str, Any], hints: Hints) -> dict[str, Any]:
    fidelity.dropped(*translator.dropped(body))
    return translator.request(body, hints)


def translation(translator: Translator, body: dict[str, Any], hints: Hints) -> Translation:
    """The one entry to a translation: the target's body and everything it did not carry as said
    (every hop of a chain), for `x-gateway-dropped` / `x-gateway-mapped`."""
    with fidelity.recording() as report:
        translated = _hop(translator, body, hints)
    return Translation(translated, report)


class ChatToMessages:
    """OpenAI Chat Completions callers on an Anthropic Messages upstream."""

    source = Api.CHAT
    target = Api.MESSAGES
    pivot_names: Mapping[str, str] = {}
    wants_prompt_count = False
    # Chat fields with an Anthropic equivalent; anything else is dropped (Anthropic rejects unknown fields).
    TRANSLATED = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options",
                            "temperature", "top_p", "stop", "tools", "tool_choice", "parallel_tool_calls", "user",
                            "response_format", "n"})

    def dropped(self, body: dict[str, Any]) -> list[str]:
        return sorted(key for key in body if key not in self.TRANSLATED)

    def request(self, body: dict[str, Any], hints: Hints) -> dict[str, Any]:
        with translating("Anthropic"):
            params = anthropic_chat.to_anthropic(body, default_max_tokens=hints.default_max_tokens,
                                                 cache_prefix=hints.cache_prefix, min_cache_chars=hints.min_cache_chars)
        if body.get("stream"):
            params["stream"] = True
        return params

    def response(self, body: bytes) -> tuple[bytes, Usage]:
        document, usage = anthropic_chat.completion_from_message(msgspec.json.decode(body))
        return msgspec.json.encode(document), usage

    async def stream(self, payloads: AsyncIterator[bytes], *, prompt_tokens: int | None = None) -> AsyncIterator[bytes]:
        translator = anthropic_chat.StreamTranslator()
        async for payload in payloads:
            event = msgspec.json.decode(payload)
            if event.get("type") == "error":
                raise UpstreamStreamError(event)
            for chunk in translator.feed(event):
                yield msgspec.json.encode(chunk)
        if not translator.finished:
            raise EOFError("the upstream stream ended before message_stop")


TRANSLATORS: dict[tuple[Api, Api], Callable[[], Translator]] = {
    (Api.CHAT, Api.MESSAGES): ChatToMessages,
    (Api.MESSAGES, Api.CHAT): MessagesToChat,
    (Api.RESPONSES, Api.CHAT): ResponsesToChat,
}


class Chained:
    """Two translators in a row, through a pivot protocol (e.g. Responses → Chat → Messages)."""

    def __init__(self, first: Translator, second: Translator) -> None:
        self.first = first
        self.second = second
        self.source = first.source
        self.target = second.target
        self.pivot_names = first.pivot_names
        self.wants_prompt_count = first.wants_prompt_count

    def request(self, body: dict[str, Any], hints: Hints) -> dict[str, Any]:
        """Both hops; what the second does not carry is reported too, in the caller's terms."""
        middle = _hop(self.first, body, replace(hints, pivot=True))
        with fidelity.recording() as onward:
            translated = _hop(self.second, middle, hints)
        fidelity.dropped(*(self.first.pivot_names.get(name, name) for name in onward.dropped))
        fidelity.mapped(*(self.first.pivot_names.get(name, name) for name in onward.mapped))
        return translated

    def response(self, body: bytes) -> tuple[bytes, Usage]:
        middle, _ = self.second.response(body)
        return self.first.response(middle)

    def stream(self, payloads: AsyncIterator[bytes], *, prompt_tokens: int | None = None) -> AsyncIterator[bytes]:
        return self.first.stream(self.second.stream(payloads), prompt_tokens=prompt_tokens)

    def dropped(self, body: dict[str, Any]) -> list[str]:
        return []  # each hop reports its own in `request`


PIVOT = Api.CHAT  # the protocol every other one translates to and from


def find(source: Api, targets: frozenset[Api]) -> Translator | None:
    """A translator from `source` to one of `targets` (the protocols an upstream speaks): direct
    when one exists, else through the pivot protocol, else None. Natively spoken protocols are
    the caller's business (no translator at all)."""
    for target in sorted(targets):
        factory = TRANSLATORS.get((source, target))
        if factory is not None:
            return factory()
    if source is not PIVOT:
        to_pivot = TRANSLATORS.get((source, PIVOT))
        if to_pivot is not None:
            if PIVOT in targets:
                return to_pivot()
            onward = find(PIVOT, targets)
            if onward is not None:
                return Chained(to_pivot(), onward)
    return None
