"""Conversation state a protocol keeps between requests (the Responses API's stored responses and
`previous_response_id`): a hook the pipeline calls before routing and after a complete answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from protocols.wire import Inbound


class Presenter(Protocol):
    """What the caller sees of an answer the upstream wrote: the answer itself, or each event of
    its stream (e.g. the `previous_response_id` the caller continued from, which the upstream was
    never told because the gateway rebuilt the conversation)."""

    def reply(self, body: bytes) -> bytes: ...

    def events(self, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]: ...

    def event(self, payload: bytes) -> bytes: ...


class AsIs:
    """The answer exactly as the upstream wrote it (no wrapping, no cost)."""

    def reply(self, body: bytes) -> bytes:
        return body

    def events(self, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return payloads

    def event(self, payload: bytes) -> bytes:
        return payload


AS_IS = AsIs()


class Session(Protocol):
    """Conversation state a protocol keeps between requests (the Responses API's stored responses
    and `previous_response_id`). `NoSession` for stateless protocols."""

    async def resolve(self, inbound: Inbound, tenant: str) -> Inbound:
        """Before routing: e.g. rebuild the conversation from a stored previous response."""
        ...

    def keeps(self, inbound: Inbound) -> bool:
        """Whether the answer must be remembered (then a stream is kept and assembled)."""
        ...

    def presenter(self, inbound: Inbound) -> Presenter:
        """How the live answer shows the state the request was resolved from (`AS_IS` if not)."""
        ...

    async def remember(self, inbound: Inbound, tenant: str, answer: bytes) -> None:
        """After a complete answer: store it (off the response path)."""
        ...


class NoSession:
    async def resolve(self, inbound: Inbound, tenant: str) -> Inbound:
        return inbound

    def keeps(self, inbound: Inbound) -> bool:
        return False

    def presenter(self, inbound: Inbound) -> Presenter:
        return AS_IS

    async def remember(self, inbound: Inbound, tenant: str, answer: bytes) -> None:
        pass


NO_SESSION = NoSession()
