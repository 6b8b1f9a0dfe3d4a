"""Stored Responses API answers: the `Session` (gateway/pipeline.py) for `Api.RESPONSES`.

With `store` (OpenAI's default) the final response object and the input it answered are kept in
the state store (the process's MemoryStore on the embedded default, Redis with --redis-url) for
the policy's `responses.ttl_seconds`. Keys carry the tenant, so a tenant can neither read nor
continue another tenant's response: an unknown id and someone else's id are the same 404.

`previous_response_id` is resolved here, before routing, into the whole conversation (the
stored input, the stored output, then the new input) and removed from what is forwarded, so any
target can continue any stored response (an Anthropic target can continue what an OpenAI target
started; a failover mid-conversation loses nothing). `store: false` keeps nothing (Codex's mode:
it sends the whole input each time, with encrypted reasoning). Each stored output item is also
kept by its id, so `item_reference` input items (the Vercel AI SDK sends them for earlier
assistant turns when `store` is on) are expanded here too, from the caller's own tenant only.

Only the Store protocol's get/set/delete are used; the store is best-effort (a Redis outage
reads as "not found"), as the cache's is.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from cache.store import Store
from protocols.errors import GatewayError
from gateway.sessions import AS_IS, Presenter
from protocols.openai_responses import WIRE, ResponsesWire, event_type
from protocols.wire import Inbound

_encode = msgspec.json.encode
_decode = msgspec.json.decode
PREFIX = "responses:"
ITEM_PREFIX = "responses-item:"  # stored output items, by id, for item_reference
MAX_LIST = 100
# Pauses (seconds) between reads of a missing key before it is declared absent (~0.3 s in all).
WRITE_GRACE: tuple[float | None, ...] = (0.01, 0.02, 0.05, 0.1, 0.15, None)


def unavailable() -> GatewayError:
    return GatewayError(503, "Stored responses are unavailable right now; try again shortly.",
                        type="service_unavailable", code="state_store_unavailable", headers={"retry-after": "1"})


def not_found(response_id: str, param: str | None = None) -> GatewayError:
    return GatewayError(404, f"Response with id '{response_id}' not found.", param=param, code="not_found")


def as_items(input_: Any) -> list[Any]:
    """The caller's `input` as a list of items (a string is one user message)."""
    if isinstance(input_, str):
        return [{"type": "message", "role": "user", "content": input_}]
    return list(input_ or [])


def listed(item: Any, response_id: str, position: int) -> dict[str, Any]:
    """An input item as `input_items.list` returns it: with an id (stable: derived from the
    response and the position when the caller sent none) and message content as parts."""
    out = dict(item) if isinstance(item, dict) else {"type": "message", "role": "user", "content": str(item)}
    kind = out.setdefault("type", "message")
    if kind == "message":
        content = out.get("content")
        if isinstance(content, str):
            part = "output_text" if out.get("role") == "assistant" else "input_text"
            out["content"] = [{"type": part, "text": content}]
        out.setdefault("status", "completed")
    if not out.get("id"):
        digest = hashlib.sha256(f"{response_id}:{position}".encode()).hexdigest()[:32]
        out["id"] = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_"}.get(kind, "item_") + digest
    return out


class ResponseStore:
    """Session for the Responses API over any `Store`."""

    def __init__(self, store: Store, ttl: Callable[[], float], wire: ResponsesWire = WIRE) -> None:
        self.store = store
        self.ttl = ttl
        self.wire = wire

    @staticmethod
    def key(tenant: str, response_id: str) -> str:
        return f"{PREFIX}{tenant}:{response_id}"

    @staticmethod
    def item_key(tenant: str, item_id: str) -> str:
        return f"{ITEM_PREFIX}{tenant}:{item_id}"

    async def _get(self, key: str) -> bytes | None:
        """A read that waits briefly on a miss: the pipeline stores an answer just after sending
        it, so a client that continues at once (a tool loop) can arrive before the write lands."""
        for delay in WRITE_GRACE:
            fetched = await self.store.fetch(key)
            if not fetched.answered:  # an outage is not a "no such response"
                raise unavailable()
            if fetched.value is not None or delay is None:
                return fetched.value
            await asyncio.sleep(delay)
        return None

    async def load(self, tenant: str, response_id: str, param: str | None = None) -> dict[str, Any]:
        """`{"response": …, "input": […]}`; 404 in OpenAI's shape when absent (or another tenant's)."""
        raw = await self._get(self.key(tenant, response_id))
        if raw is None:
            raise not_found(response_id, param)
        return _decode(raw)

    async def delete(self, tenant: str, response_id: str) -> None:
        record = await self.load(tenant, response_id)  # 404 when absent
        await self.store.delete(self.key(tenant, response_id))
        for item in record["response"].get("output") or []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                await self.store.delete(self.item_key(tenant, item["id"]))

    # -- the Session hook ---------------------------------------------------------------------------

    async def resolve(self, inbound: Inbound, tenant: str) -> Inbound:
        previous = getattr(inbound.view, "previous_response_id", None)
        items = inbound.body.get("input")
        references = isinstance(items, list) and any(
            isinstance(item, dict) and item.get("type") == "item_reference" for item in items)
        if previous is None and not references:
            return inbound
        body = {k: v for k, v in inbound.body.items() if k != "previous_response_id"}
        current = await self._dereference(tenant, as_items(items)) if references else as_items(items)
        if previous is not None:
            record = await self.load(tenant, previous, param="previous_response_id")
            # The stored response's output is valid input as it is (messages, function calls,
            # reasoning items), which is how OpenAI itself continues a conversation.
            current = [*record["input"], *record["response"].get("output", []), *current]
        body["input"] = current
        return self.wire.inbound(body, view=inbound.view)

    async def _dereference(self, tenant: str, items: list[Any]) -> list[Any]:
        """`item_reference` items (the AI SDK's way to repeat stored output) replaced by the items
        themselves, from this tenant's stored output only: any target can then serve them, and a
        reference to another tenant's item is a 404 rather than a lookup in OpenAI's shared store."""
        out = []
        for number, item in enumerate(items):
            if isinstance(item, dict) and item.get("type") == "item_reference":
                raw = await self._get(self.item_key(tenant, str(item.get("id"))))
                if raw is None:
                    raise GatewayError(404, f"Item with id '{item.get('id')}' not found.", param=f"input[{number}]",
                                       code="not_found")
                item = _decode(raw)
            out.append(item)
        return out

    def keeps(self, inbound: Inbound) -> bool:
        return bool(getattr(inbound.view, "stored", False))

    def presenter(self, inbound: Inbound) -> Presenter:
        previous = getattr(inbound.view, "previous_response_id", None)
        return AS_IS if previous is None else ContinuedFrom(previous)

    async def remember(self, inbound: Inbound, tenant: str, answer: bytes) -> None:
        response = _decode(answer)
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return
        previous = getattr(inbound.view, "previous_response_id", None)
        if previous is not None:  # what the caller sent, not the expanded request that was forwarded
            response["previous_response_id"] = previous
        record = {"response": response, "input": as_items(inbound.body.get("input"))}
        ttl = self.ttl()
        await self.store.set(self.key(tenant, response["id"]), _encode(record), ttl)
        for item in response.get("output") or []:  # what `item_reference` may name later
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                await self.store.set(self.item_key(tenant, item["id"]), _encode(item), ttl)

    # -- views ----------------------------------------------------------------------------------------

    async def input_items(self, tenant: str, response_id: str, *, order: str = "desc", after: str | None = None,
                          limit: int = 20) -> dict[str, Any]:
        """OpenAI's `GET /v1/responses/{id}/input_items` page (`order` desc by default)."""
        record = await self.load(tenant, response_id)
        items = [listed(item, response_id, n) for n, item in enumerate(record["input"])]
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > len(page)}


# The stream events that carry the whole response object (and so its previous_response_id).
_RESPONSE_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress", "response.completed",
                              "response.incomplete", "response.failed"})


class ContinuedFrom:
    """The live answer of a request continued with `previous_response_id`: the upstream was sent
    the rebuilt conversation instead, so its answer says null; the caller sees the id it sent,
    as in the stored copy (`remember`)."""

    def __init__(self, previous: str) -> None:
        self.previous = previous

    def reply(self, body: bytes) -> bytes:
        try:
            response = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return body
        if not isinstance(response, dict):
            return body
        response["previous_response_id"] = self.previous
        return msgspec.json.encode(response)

    def event(self, payload: bytes) -> bytes:
        if event_type(payload) not in _RESPONSE_EVENTS:
            return payload
        try:
            event = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return payload
        if not isinstance(event, dict) or not isinstance(event.get("response"), dict):
            return payload
        event["response"]["previous_response_id"] = self.previous
        return msgspec.json.encode(event)

    async def events(self, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for payload in payloads:
                yield self.event(payload)
        finally:
            aclose = getattr(payloads, "aclose", None)
            if aclose is not None:
                await aclose()
