"""`POST /v1/chat/completions`: the hot path, as a raw ASGI handler mounted in Litestar.

The gateway only moves bytes here (the pipeline decides, providers forward), so Litestar's
per-request Request/Response layers would be pure overhead: this handler reads the body and
writes the reply itself. Every other route is an ordinary Litestar handler.
"""

from __future__ import annotations

import logging

from litestar import asgi
from litestar.types import Receive, Scope, Send

from gateway.errors import GatewayError, error_body
from gateway.pipeline import Gateway

log = logging.getLogger("gateway")

_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def _headers(extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]


async def _send_json(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    headers = {"x-gateway-target": "none", **headers}  # every reply says what served it
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode()), *_headers(headers)]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, ceiling: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > ceiling:
            raise GatewayError(413, "Request body too large.", code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@asgi("/v1/chat/completions", is_mount=False, copy_scope=False)
async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["method"] != "POST":
        await _send_json(send, 405, error_body("Method not allowed for this path.", code="method_not_allowed"),
                         {"allow": "POST"})
        return
    app = scope["app"]
    gateway: Gateway = app.state.gateway
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    try:
        declared = int(headers.get("content-length") or 0)
        ceiling = app.state.settings.body_ceiling_bytes
        if declared > ceiling:
            raise GatewayError(413, "Request body too large.", code="request_too_large")
        reply = await gateway.chat_completions(await _read_body(receive, ceiling), headers)
    except GatewayError as exc:
        await _send_json(send, exc.status, exc.body(), exc.headers)
        return
    except ConnectionAbortedError:
        return
    except ValueError:
        await _send_json(send, 400, error_body("Invalid Content-Length header.", code="invalid_request"), {})
        return
    if reply.stream is None:
        await _send_json(send, reply.status, reply.body, reply.headers)
        return
    frames = reply.stream
    try:
        # Start the relay before anything can fail: once started, closing it always settles.
        first = await anext(frames)
        await send({"type": "http.response.start", "status": reply.status, "headers": [*_SSE, *_headers(reply.headers)]})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        async for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError as exc:  # the client went away: closing the relay cancels the upstream and settles
        log.debug("client disconnected mid-stream: %s", exc)
    finally:
        await frames.aclose()
