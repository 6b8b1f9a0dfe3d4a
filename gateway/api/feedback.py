"""`POST /v1/feedback` (a tenant labels one of its own requests) and `GET /admin/router/export`
(operators pull labelled decisions for `hybrid-gateway router train --feedback`).

Feedback is authenticated with the caller's API key like every `/v1` route, and the key decides
the tenant: a request id of another tenant is indistinguishable from an unknown one (404), so
nobody can probe or label someone else's traffic.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromQuery
from msgspec import Meta

from gateway.errors import GatewayError

MAX_BODY_BYTES = 16 * 1024


class FeedbackBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    request_id: Annotated[str, Meta(min_length=1, max_length=200)]
    label: Literal["easy", "hard"] | None = None  # easy: the cheap model was enough; hard: it was not
    score: Annotated[float, Meta(ge=0, le=1)] | None = None  # 0 = trivially easy ... 1 = needs the frontier
    comment: Annotated[str, Meta(max_length=2000)] | None = None


def parse_feedback(raw: bytes) -> FeedbackBody:
    if len(raw) > MAX_BODY_BYTES:
        raise GatewayError(413, f"Feedback bodies are limited to {MAX_BODY_BYTES} bytes.", code="request_too_large")
    try:
        body = msgspec.json.decode(raw, type=FeedbackBody)
    except msgspec.ValidationError as exc:
        param = str(exc).rsplit("$.", 1)[-1].rstrip("`") if "$." in str(exc) else None
        raise GatewayError(400, f"Invalid feedback: {exc}", code="invalid_feedback", param=param) from None
    except msgspec.DecodeError:
        raise GatewayError(400, "The body is not valid JSON.", code="invalid_json") from None
    if (body.label is None) == (body.score is None):
        raise GatewayError(400, "Give exactly one of `label` (easy|hard) or `score` (0-1).", code="invalid_feedback",
                           param="label")
    return body


def _store(request: Request):
    store = getattr(request.app.state, "decisions", None)
    if store is None:
        raise GatewayError(503, "Routing decisions are not being recorded on this gateway.",
                           type="service_unavailable", code="feedback_unavailable")
    return store


@post("/v1/feedback", status_code=200)
async def submit_feedback(request: Request) -> dict:
    principal = request.app.state.gateway.runtime.keyring.authenticate(request.headers)
    body = parse_feedback(await request.body())
    feedback = {"label": body.label, "score": body.score, "comment": body.comment}
    if not await _store(request).add_feedback(principal.tenant, body.request_id, feedback):
        raise GatewayError(404, f"No routing decision '{body.request_id}' for your tenant (unknown, or expired).",
                           code="request_not_found", param="request_id")
    return {"object": "feedback", "request_id": body.request_id, "status": "recorded"}


@get("/admin/router/export")
async def export_decisions(request: Request, tenant: FromQuery[str | None] = None,
                           labelled: FromQuery[bool] = True) -> Response:
    """JSON lines: one decision per line (with its feedback, model input and both shadow scores)."""
    request.app.state.gateway.runtime.keyring.require_admin(request.headers)
    rows = await _store(request).export(tenant=tenant, labelled_only=labelled)
    text = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
    return Response(text, media_type="application/x-ndjson")


FEEDBACK_ROUTES = [submit_feedback, export_decisions]
