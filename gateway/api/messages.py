"""`POST /v1/messages/count_tokens`: how many input tokens a Messages request would cost.

Routed like the request itself (aliases, routes, `auto`), then counted by the first candidate
that can count exactly: an Anthropic target asks Anthropic; the bundled engine uses the served
model's tokenizer over its chat template; anything else falls back to the gateway's estimator.
`x-gateway-token-count` says which (`upstream`, `tokenizer` or `estimate`). Nothing is
reserved or billed: counting is free upstream too.
"""

from __future__ import annotations

from litestar import Request, Response, post

from gateway.pipeline import Gateway, new_request_id
from protocols import anthropic_messages
from protocols.api import Api
from protocols.headers import for_target
from protocols.errors import GatewayError, status_for
from protocols.wire import convert, decode_json
from providers.base import ProviderError, ProviderRequest, Timeouts, TokenCounter


def _error(exc: GatewayError) -> Response:
    return Response(exc.body(Api.MESSAGES), status_code=status_for(Api.MESSAGES, exc.status),
                    media_type="application/json", headers=exc.headers)


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    runtime = gateway.runtime
    headers = dict(request.headers)
    try:
        principal = runtime.keyring.authenticate(headers)
        body = decode_json(await request.body())
        convert(body, anthropic_messages.CountTokensRequest)
        plan = await runtime.router.plan(body["model"], principal, anthropic_messages.conversation(body), headers,
                                         anthropic_messages.estimate_prompt_tokens(body), Api.MESSAGES)
    except GatewayError as exc:
        return _error(exc)
    forward = anthropic_messages.forwarded_headers(headers)
    for candidate in plan.candidates:
        if not isinstance(candidate.provider, TokenCounter):
            continue
        t = candidate.timeouts
        upstream = ProviderRequest(body={**body, "model": candidate.spec.model, "max_tokens": 1},
                                   request_id=new_request_id(headers),
                                   tenant=principal.tenant, api=Api.MESSAGES,
                                   forward_headers=for_target(forward, candidate.spec.headers),
                                   timeouts=Timeouts(connect=t.connect, first_token=t.first_token, total=t.total))
        try:
            counted = await candidate.provider.count_tokens(upstream)
        except ProviderError:
            continue  # the next candidate, or the estimate
        if counted is not None:
            return Response({"input_tokens": counted.tokens}, status_code=200,
                            headers={"x-gateway-token-count": counted.source, "x-gateway-target": candidate.name})
    return Response({"input_tokens": anthropic_messages.estimate_prompt_tokens(body)}, status_code=200,
                    headers={"x-gateway-token-count": "estimate", "x-gateway-target": "none"})
