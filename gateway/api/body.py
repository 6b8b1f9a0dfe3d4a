"""Every request body is read here, once, before any route sees it: under the body-read deadline,
capped by the body limit, and refused in the caller's protocol when its HTTP framing is broken.

Why a layer of its own: the ASGI servers report a body whose framing breaks (a chunked body with
a bad chunk size or a missing CRLF, a body cut short by a half-close) only as `http.disconnect`,
while the connection can often still carry an answer (granian's can). A route that simply returns
on `http.disconnect` leaves the server to invent a plain-text `500 Internal server error`, and
Litestar's own body reader turns the same event into a 500. Reading here gives every route one
behaviour: 400 (framing or a cut-short body), 408 (the deadline), 413 (the limit), each as the
caller's protocol's error JSON with `connection: close`; where the connection is gone the answer
is dropped by the server and the request simply ends.

Routes then receive the whole body as one `http.request` message; later `receive()` calls go to
the server, so a route can still watch for the caller hanging up.
"""

from __future__ import annotations

import asyncio
import contextlib

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from protocols.api import Api
from protocols.errors import GatewayError, body_for, status_for

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def api_for_path(path: str) -> Api:
    """Which protocol's error JSON a path's callers read (Anthropic's under /v1/messages)."""
    return Api.MESSAGES if path.startswith("/v1/messages") else Api.CHAT


class BodyCutShort(Exception):
    """The body ended before its framing said it would (or its framing was invalid)."""


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    length = coding = None
    for name, value in headers:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            coding = value
    return length, coding


def check_framing(headers: list[tuple[bytes, bytes]], ceiling: int) -> None:
    """Refuse, before reading anything, framing a body cannot be read safely with.

    Content-Length together with Transfer-Encoding is the request-smuggling shape (RFC 9112 §6.3
    lets a server refuse it); a transfer coding other than plain `chunked` would hand us bytes we
    cannot decode; a declared length over the limit needs no reading to refuse.
    """
    length, coding = _framing(headers)
    if length is not None and coding is not None:
        raise GatewayError(400, "Content-Length and Transfer-Encoding were both sent; send one.",
                           code="invalid_framing", headers={"connection": "close"})
    if coding is not None and coding.strip().lower() != b"chunked":
        raise GatewayError(400, f"Transfer-Encoding {coding.decode('latin-1')!r} is not supported; send the body "
                           "with Content-Length or chunked.", code="invalid_framing", headers={"connection": "close"})
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise GatewayError(400, "Invalid Content-Length header.", code="invalid_framing",
                               headers={"connection": "close"}) from None
        if declared > ceiling:
            raise too_large(ceiling)


def body_ceiling(state) -> int:
    """The policy's body limit (hot-reloadable), never above the server's ceiling."""
    return min(state.settings.body_ceiling_bytes, state.gateway.runtime.policy.limits.max_body_bytes)


def too_large(ceiling: int) -> GatewayError:
    return GatewayError(413, f"Request body too large: the maximum is {ceiling} bytes.", code="request_too_large",
                        headers={"connection": "close"})


async def read_body(receive: Receive, ceiling: int) -> bytes:
    """The whole body, refused as soon as it grows past `ceiling` (whatever was declared)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyCutShort
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > ceiling:
            raise too_large(ceiling)
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_guarded(scope: Scope, receive: Receive, ceiling: int, deadline: float) -> bytes:
    """`read_body` under the deadline, every failure a `GatewayError` the caller can be sent."""
    check_framing(scope["headers"], ceiling)
    try:
        async with asyncio.timeout(deadline):
            return await read_body(receive, ceiling)
    except BodyCutShort:
        raise GatewayError(400, "The request body ended before it was complete, or its framing was invalid.",
                           code="invalid_framing", headers={"connection": "close"}) from None
    except TimeoutError:
        raise GatewayError(408, "The request body did not arrive in time.", code="request_timeout",
                           headers={"connection": "close"}) from None


def raw_headers(extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    """One whole JSON reply over raw ASGI (the inference endpoints and the body guard write no
    other kind): it says what served it, `x-gateway-target: none` unless `headers` name a target."""
    headers = {"x-gateway-target": "none", **headers}
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *raw_headers(headers)]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, api: Api, exc: GatewayError) -> None:
    """The error as JSON in `api`'s shape; a connection already gone drops it (never raises)."""
    with contextlib.suppress(OSError, RuntimeError):  # servers differ on writes after a hang-up
        await send_json(send, status_for(api, exc.status), exc.body(api), exc.headers)


def body_guard(app: ASGIApp) -> ASGIApp:
    """Litestar middleware: read the body under the deadline and limits, then run the route."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await app(scope, receive, send)
            return
        state = scope["app"].state
        try:
            raw = await read_guarded(scope, receive, body_ceiling(state), state.settings.body_read_timeout)
        except GatewayError as exc:
            await send_error(send, api_for_path(scope["path"]), exc)
            return
        pending: list[Message] = [{"type": "http.request", "body": raw, "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await app(scope, replay, send)

    return guarded
