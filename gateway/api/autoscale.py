"""Operator endpoint (admin key): the autoscaling advisor's current advice per self-hosted target."""

from __future__ import annotations

from litestar import Request, get


@get("/admin/autoscale")
async def autoscale_view(request: Request) -> dict:
    """Desired replicas, the raw recommendation, the limiting signal and how many replicas
    reported load, per target with an `autoscale` block (gateway/autoscale.py). Each gateway
    replica computes its own advice from the same engines' load, so replicas agree closely."""
    request.app.state.gateway.runtime.keyring.require_admin(request.headers)
    return {"targets": request.app.state.autoscaler.snapshot()}
