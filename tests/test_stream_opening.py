"""The executor holds a stream's opening events (no answer yet) back with the first real one, so
failover stays invisible until the answer starts; at most MAX_PREAMBLE of them."""

from __future__ import annotations

import json

import pytest

from gateway.executor import MAX_PREAMBLE, Executor
from gateway.router import Candidate, Plan
from policies.schema import ModelSpec, TargetSpec, TimeoutSpec
from protocols import anthropic_messages
from protocols.api import Api
from providers.base import Health, ProviderRequest, Unavailable

PING = json.dumps({"type": "ping"}).encode()
DELTA = json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}).encode()


class Upstream:
    """An upstream speaking Anthropic's stream: `opening` pings, then what `then` says."""

    apis = frozenset({Api.MESSAGES})

    def __init__(self, name: str, opening: int, then: str) -> None:
        self.name, self.opening, self.then, self.closed = name, opening, then, False

    async def stream(self, request: ProviderRequest):
        try:
            for _ in range(self.opening):
                yield PING
            if self.then == "fail":
                raise Unavailable("broke before the answer", target=self.name)
            yield DELTA
            yield DELTA
        finally:
            self.closed = True

    async def complete(self, request):  # pragma: no cover - streams only here
        raise NotImplementedError

    async def health(self) -> Health:
        return Health(True)

    async def aclose(self) -> None:
        pass


def plan(*upstreams: Upstream) -> Plan:
    spec = TargetSpec(provider="anthropic", model="m")
    return Plan(model="m", model_spec=ModelSpec(targets=[u.name for u in upstreams]),
                candidates=[Candidate(u.name, spec, u, TimeoutSpec()) for u in upstreams])


def request(candidate: Candidate) -> ProviderRequest:
    return ProviderRequest(body={}, request_id="r", api=Api.MESSAGES)


async def test_opening_events_are_held_with_the_first_real_one():
    start = await Executor().open_stream(plan(Upstream("a", 3, "answer")), request, peek=anthropic_messages.WIRE.peek)
    assert start.head == [PING, PING, PING, DELTA] and [p async for p in start.rest] == [DELTA]


async def test_an_upstream_failing_before_its_answer_fails_over_invisibly():
    first, second = Upstream("a", 3, "fail"), Upstream("b", 1, "answer")
    start = await Executor().open_stream(plan(first, second), request, peek=anthropic_messages.WIRE.peek)
    assert start.candidate.name == "b" and start.head == [PING, DELTA]
    assert [f.target for f in start.failures] == ["a"] and first.closed


@pytest.mark.parametrize("opening", [MAX_PREAMBLE + 4])
async def test_at_most_max_preamble_events_are_held(opening):
    start = await Executor().open_stream(plan(Upstream("a", opening, "answer")), request,
                                         peek=anthropic_messages.WIRE.peek)
    assert start.head == [PING] * MAX_PREAMBLE
    assert len([p async for p in start.rest]) == opening - MAX_PREAMBLE + 2
