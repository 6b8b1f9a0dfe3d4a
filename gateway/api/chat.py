"""`POST /v1/chat/completions`: hands the raw body to the pipeline, returns bytes or SSE."""

from __future__ import annotations

from litestar import Request, Response, post
from litestar.response import Stream

from gateway.pipeline import Gateway


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response | Stream:
    gateway: Gateway = request.app.state.gateway
    reply = await gateway.chat_completions(await request.body(), request.headers)
    if reply.stream is not None:
        headers = {**reply.headers, "cache-control": "no-cache", "x-accel-buffering": "no"}
        return Stream(reply.stream, media_type="text/event-stream", headers=headers, status_code=reply.status)
    return Response(content=reply.body, media_type="application/json", headers=reply.headers, status_code=reply.status)
