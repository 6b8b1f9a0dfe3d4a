"""Conversation state a protocol keeps between requests (the Responses API's stored responses and
`previous_response_id`): a hook the pipeline calls before routing and after a complete answer."""

from __future__ import annotations

from typing import Protocol

from protocols.wire import Inbound


class Session(Protocol):
    """Conversation state a protocol keeps between requests (the Responses API's stored responses
    and `previous_response_id`). `NoSession` for stateless protocols."""

    async def resolve(self, inbound: Inbound, tenant: str) -> Inbound:
        """Before routing: e.g. rebuild the conversation from a stored previous response."""
        ...

    def keeps(self, inbound: Inbound) -> bool:
        """Whether the answer must be remembered (then a stream is kept and assembled)."""
        ...

    async def remember(self, inbound: Inbound, tenant: str, answer: bytes) -> None:
        """After a complete answer: store it (off the response path)."""
        ...


class NoSession:
    async def resolve(self, inbound: Inbound, tenant: str) -> Inbound:
        return inbound

    def keeps(self, inbound: Inbound) -> bool:
        return False

    async def remember(self, inbound: Inbound, tenant: str, answer: bytes) -> None:
        pass


NO_SESSION = NoSession()
