"""Operator endpoints (admin key): policy reload and state views."""

from __future__ import annotations

from litestar import Request, Response, get, post

from gateway.errors import error_body


@post("/admin/policies/reload", status_code=200)
async def reload_policy(request: Request) -> Response:
    request.app.state.gateway.runtime.keyring.require_admin(request.headers)
    watcher = request.app.state.policy_watcher
    result = await watcher.reload(force=True)
    document = result.as_json(str(watcher.path))
    if result.ok:
        return Response(document, status_code=200)
    body = error_body(str(result.error), code="invalid_policy", details=document["error"])
    return Response(body, status_code=400, media_type="application/json")


@get("/admin/breakers")
async def breakers_view(request: Request) -> dict:
    """Every breaker the store knows, as all replicas see it (state, failure rate, cool-down)."""
    request.app.state.gateway.runtime.keyring.require_admin(request.headers)
    return {"breakers": await request.app.state.breakers.snapshot()}
