"""The Responses API's stored-state endpoints: retrieve, delete and list the input of a stored
response, and count a request's input tokens.

Every route authenticates like the inference routes and reads only the caller's own tenant's
responses (gateway/responses_store.py): another tenant's id is a 404, exactly like an unknown one.
Errors leave in OpenAI's error JSON (the app's exception handlers).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import FromPath

from gateway.auth import Principal
from gateway.pipeline import Gateway, new_request_id
from gateway.responses_store import MAX_LIST, ResponseStore
from protocols.api import Api
from protocols.errors import bad_request
from protocols.openai_responses import WIRE
from protocols.responses_events import replay_events
from protocols.wire import decode_json
from providers.base import ProviderError, ProviderRequest, Timeouts

_JSON = "application/json"


def _context(request: Request) -> tuple[Gateway, Principal, ResponseStore]:
    gateway: Gateway = request.app.state.gateway
    principal = gateway.runtime.keyring.authenticate(request.headers)
    return gateway, principal, request.app.state.responses


@get("/v1/responses/{response_id:str}")
async def retrieve_response(request: Request, response_id: FromPath[str]) -> Response:
    """The stored response; with `?stream=true` its whole event sequence as server-sent events
    (a stored response is finished, so the replay is what a live stream sent), from the event
    after `starting_after` when given (a client resuming a cut stream)."""
    _, principal, store = _context(request)
    query = request.query_params
    stream = (query.get("stream") or "false").lower()
    if stream not in ("true", "false"):
        raise bad_request("stream must be 'true' or 'false'.", param="stream")
    after = query.get("starting_after")
    try:
        starting_after = int(after) if after is not None else -1
    except ValueError:
        raise bad_request("starting_after must be an integer.", param="starting_after") from None
    record = await store.load(principal.tenant, response_id)
    if stream == "false":
        return Response(record["response"], media_type=_JSON)
    frames = [WIRE.frame(msgspec.json.encode(event)) for event in replay_events(record["response"])
              if event["sequence_number"] > starting_after]
    return Response(b"".join(frames), media_type="text/event-stream", headers={"cache-control": "no-cache"})


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response(request: Request, response_id: FromPath[str]) -> Response:
    _, principal, store = _context(request)
    await store.delete(principal.tenant, response_id)
    return Response({"id": response_id, "object": "response", "deleted": True}, media_type=_JSON)


@get("/v1/responses/{response_id:str}/input_items")
async def list_input_items(request: Request, response_id: FromPath[str]) -> Response:
    _, principal, store = _context(request)
    query = request.query_params
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request("order must be 'asc' or 'desc'.", param="order")
    try:
        limit = int(query.get("limit") or 20)
    except ValueError:
        raise bad_request("limit must be an integer.", param="limit") from None
    if not 1 <= limit <= MAX_LIST:
        raise bad_request(f"limit must be between 1 and {MAX_LIST}.", param="limit")
    page = await store.input_items(principal.tenant, response_id, order=order, after=query.get("after"), limit=limit)
    return Response(page, media_type=_JSON)


async def _counted(gateway: Gateway, principal: Principal, inbound: Any, headers: dict[str, str]) -> int | None:
    """An exact count from the first candidate that can count (Anthropic upstream, the engine's
    tokenizer); None when none can."""
    plan = await gateway.runtime.router.plan(inbound.model, principal, inbound.conversation, headers,
                                             inbound.prompt_tokens, Api.RESPONSES)
    for candidate in plan.candidates:
        count = getattr(candidate.provider, "count_tokens", None)
        if count is None:
            continue
        t = candidate.timeouts
        upstream = ProviderRequest(body=WIRE.prepare(inbound, candidate.spec.model, 1), request_id=new_request_id(headers),
                                   tenant=principal.tenant, api=Api.RESPONSES,
                                   timeouts=Timeouts(connect=t.connect, first_token=t.first_token, total=t.total))
        try:
            counted = await count(upstream)
        except ProviderError:
            continue
        if counted is not None:
            return counted.tokens
    return None


@post("/v1/responses/input_tokens", status_code=200)
async def count_input_tokens(request: Request) -> Response:
    """`{"object": "response.input_tokens", "input_tokens": N}` for a Responses request
    (previous_response_id included); `x-gateway-token-count` says `counted` or `estimate`."""
    gateway, principal, store = _context(request)
    headers = dict(request.headers)
    body = decode_json(await request.body())
    if not body.get("model"):
        body["model"] = gateway.runtime.policy.default_model or next(iter(gateway.runtime.policy.models))
    body.pop("stream", None)
    inbound = await store.resolve(WIRE.inbound(body), principal.tenant)
    tokens = await _counted(gateway, principal, inbound, headers)
    source = "estimate" if tokens is None else "counted"
    return Response({"object": "response.input_tokens", "input_tokens": inbound.prompt_tokens if tokens is None else tokens},
                    media_type=_JSON, headers={"x-gateway-token-count": source})


RESPONSES_ROUTES = [retrieve_response, delete_response, list_input_items, count_input_tokens]
