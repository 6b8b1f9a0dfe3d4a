"""One routing decision per conversation, kept in the state layer and shared by every replica.

Why: a chat goes on for many turns and a coding agent sends dozens of requests per task, each
with the whole history. Deciding per request can switch model in the middle of a tool loop,
where one model's tool-call ids and signed thinking blocks mean nothing to another. So the first
request of a conversation decides (route and target), and its later turns reuse that decision;
`Router.hold` says when a later turn may escalate (a new user turn whose own score picks a
stronger target), and a failover moves the conversation to the target that actually answered.

A conversation is known by what its protocol offers (`protocols/turns.py`): the digest of its
fixed opening (system prompt and everything up to the first thing the user asked), plus the
Responses `prompt_cache_key` or the Messages `metadata.user_id` when sent; a `previous_response_id`
is resolved into the whole conversation before routing, so it has the same opening. Keys carry
the tenant and the requested model.

Best effort, like the cache: the store is the one behind the response cache (memory, or Redis
shared by the replicas) and an outage reads as "no decision yet" (a fresh decision, never an
error). Each decision lives `ttl` seconds after it was last written; a conversation in use
rewrites it once half of that has passed. A request with no history yet (a first turn) is always
decided on its own and starts the record, so identical one-shot requests stay independent.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from policies.schema import TargetSpec
from protocols.api import Api
from protocols.turns import Turns

if TYPE_CHECKING:
    from cache.store import Store
    from gateway.router import Plan, Router

PREFIX = "sticky:"


class Pin(msgspec.Struct, frozen=True):
    """What was decided for a conversation: the route and the target that serves it."""

    route: str
    target: str
    ts: float = 0.0  # when it was written (refreshed when half the TTL has passed)


_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(Pin).decode


def strength(target: TargetSpec) -> float:
    """How strong a target is, for escalation: what the policy prices it at (USD per million
    input plus output tokens; self-hosted targets by GPU time). A pricier target is a stronger tier."""
    pricing = target.effective_pricing()
    return pricing.input + pricing.output


def thread_key(tenant: str, model: str, turns: Turns) -> str | None:
    """The conversation's key, or None when the request has not asked anything yet."""
    if not turns.opening:
        return None
    basis = "\0".join((tenant, model, turns.opening, turns.thread_id, turns.user_id))
    return PREFIX + hashlib.blake2b(basis.encode("utf-8", "replace"), digest_size=16).hexdigest()


def moved(plan: Plan, target: str) -> bool:
    """Whether a failover had another target answer a conversation's request."""
    return plan.thread is not None and bool(plan.candidates) and target != plan.candidates[0].name


class Stickiness:
    """The routing step's memory: `hold` before a request is sent, `served` after it is answered."""

    def __init__(self, store: Store, ttl: Callable[[], float], clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock

    async def _recall(self, key: str) -> Pin | None:
        raw = await self.store.get(key)
        if raw is None:
            return None
        try:
            return _decode(raw)
        except msgspec.DecodeError:  # written by another version: decide afresh
            return None

    async def _keep(self, key: str, route: str, target: str) -> None:
        await self.store.set(key, _encode(Pin(route, target, self.clock())), self.ttl())

    async def hold(self, router: Router, plan: Plan, turns: Turns, tenant: str, api: Api) -> Plan:
        """The plan this conversation keeps (see `Router.hold`); plans no route decided pass through."""
        key = thread_key(tenant, plan.model, turns)
        if key is None or not router.sticky(plan):
            return plan
        # A request with no history starts a conversation: decided on its own (identical one-shot
        # requests stay independent, and a first turn costs no read), then kept.
        opening = turns.assistant_turns == 0 and turns.tool_results == 0
        pin = None if opening else await self._recall(key)
        held = router.hold(plan, pin, turns.tool_loop, api)
        held.thread = key
        stale = pin is not None and self.clock() - pin.ts > self.ttl() / 2
        held.pin_due = held.sticky != "kept" or stale  # the caller keeps it with `served`, in the background
        return held

    async def served(self, plan: Plan, target: str | None) -> None:
        """Keeps a new or aging decision for `target` (the pipeline runs it in the background as
        soon as the candidates are known, so the write costs the request nothing and lands long
        before the answer a next turn depends on), and moves the conversation to whichever target
        answered when a failover had another one answer."""
        if target is not None and plan.thread is not None and (plan.pin_due or moved(plan, target)):
            await self._keep(plan.thread, plan.route_name or "", target)


class NoStickiness:
    """Every request decided on its own (no state store, or tests of the router alone)."""

    async def hold(self, router: Router, plan: Plan, turns: Turns, tenant: str, api: Api) -> Plan:
        return plan

    async def served(self, plan: Plan, target: str | None) -> None:
        pass


NO_STICKINESS = NoStickiness()
