"""The inference endpoints as raw ASGI handlers: read the body, hand it with its protocol to the
pipeline, write the reply. One handler shape for every protocol.

The gateway only moves bytes here (the pipeline decides, providers forward), so Litestar's
per-request Request/Response layers would be pure overhead. Two things only this layer can do:
errors leave in the caller's protocol, and a caller that hangs up is noticed (ASGI servers drop
writes to a closed connection silently, so the handler watches `receive()` for
`http.disconnect`) and the request is cancelled, which closes the upstream call and settles
what was delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from litestar import asgi
from litestar.types import Receive, Scope, Send

from gateway.api.body import BodyCutShort, body_ceiling, raw_headers, read_body, send_json
from gateway.api.errors import internal_error
from gateway.pipeline import Gateway, Reply
from protocols.api import Api
from protocols.errors import GatewayError, body_for, status_for

log = logging.getLogger("gateway")

_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


async def _cancel_when_gone(receive: Receive, task: asyncio.Task) -> None:
    """Cancel `task` when the caller hangs up (the body has been read, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


async def _send_stream(send: Send, reply: Reply) -> None:
    frames: AsyncIterator[bytes] = reply.stream
    # Start the relay before anything can fail: once started, closing it always settles.
    first = await anext(frames)
    await send({"type": "http.response.start", "status": reply.status, "headers": [*_SSE, *raw_headers(reply.headers)]})
    await send({"type": "http.response.body", "body": first, "more_body": True})
    async for frame in frames:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _respond(send: Send, gateway: Gateway, api: Api, raw: bytes, headers: dict[str, str]) -> None:
    try:
        reply = await gateway.handle(api, raw, headers)
    except GatewayError as exc:
        await send_json(send, status_for(api, exc.status), exc.body(api), exc.headers)
        return
    except Exception:
        log.exception("unhandled error on %s", api)
        error = internal_error()
        await send_json(send, error.status, error.body(api), {})
        return
    if reply.stream is None:
        await send_json(send, reply.status, reply.body, reply.headers)
        return
    try:
        await _send_stream(send, reply)
    finally:  # closing the relay closes the upstream stream and settles, on every path
        await reply.stream.aclose()


def endpoint(path: str, api: Api):
    """A POST endpoint speaking `api`."""

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_json(send, 405, body_for(api, 405, "Method not allowed for this path.", code="method_not_allowed"),
                             {"allow": "POST"})
            return
        app = scope["app"]
        gateway: Gateway = app.state.gateway
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:  # the body guard (gateway/api/body.py) has read it whole under the deadline and limits
            raw = await read_body(receive, body_ceiling(app.state))
        except GatewayError as exc:
            await send_json(send, status_for(api, exc.status), exc.body(api), exc.headers)
            return
        except BodyCutShort:
            return
        # One watcher per request cancels this task if the caller hangs up: the upstream call or
        # stream is closed by the cancellation, and settlement charges what was delivered.
        task = asyncio.current_task()
        watcher = asyncio.get_running_loop().create_task(_cancel_when_gone(receive, task))
        try:
            await _respond(send, gateway, api, raw, headers)
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise  # cancelled by the server (shutdown), not by the caller
            task.uncancel()
        except OSError as exc:  # the connection broke while we were writing
            log.debug("client disconnected mid-stream: %s", exc)
        finally:
            watcher.cancel()

    return asgi(path, is_mount=False, copy_scope=False)(handler)


chat_completions = endpoint("/v1/chat/completions", Api.CHAT)
completions = endpoint("/v1/completions", Api.COMPLETIONS)
embeddings = endpoint("/v1/embeddings", Api.EMBEDDINGS)
responses = endpoint("/v1/responses", Api.RESPONSES)
messages = endpoint("/v1/messages", Api.MESSAGES)

INFERENCE_ROUTES = [chat_completions, completions, embeddings, messages, responses]
