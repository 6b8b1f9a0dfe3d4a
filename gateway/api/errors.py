"""Every error leaves in OpenAI's error JSON, whoever raised it (our code, Litestar, a bug)."""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException

from gateway.errors import GatewayError, error_body

log = logging.getLogger("gateway")

_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error"}


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def gateway_error(_: Request, exc: GatewayError) -> Response:
    return _json(exc.status, exc.body(), exc.headers)


def http_error(_: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    message = exc.detail or "HTTP error"
    if status == 413:
        message = "Request body too large."
    elif status == 405:
        message = "Method not allowed for this path."
    elif status == 404:
        message = "Unknown path. This gateway serves the OpenAI API under /v1."
    code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(status)
    return _json(status, error_body(message, type=_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"), code=code),
                 getattr(exc, "headers", None))


def internal_error() -> GatewayError:
    """A bug of ours, in the caller's protocol (an Anthropic SDK must see Anthropic's error shape
    even then): a plain 500 whose body says nothing about the internals."""
    return GatewayError(500, "The gateway hit an internal error.", type="server_error", code="internal_error")


def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return gateway_error(request, internal_error())


EXCEPTION_HANDLERS = {GatewayError: gateway_error, HTTPException: http_error, Exception: unexpected_error}
