"""Models list, liveness and readiness."""

from __future__ import annotations

from litestar import Request, Response, get
from litestar.params import FromPath

from gateway.pipeline import Gateway


@get("/v1/models")
async def list_models(request: Request) -> dict:
    gateway: Gateway = request.app.state.gateway
    return gateway.list_models(request.headers)


@get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: FromPath[str]) -> dict:
    gateway: Gateway = request.app.state.gateway
    return gateway.retrieve_model(model.lstrip("/"), request.headers)


@get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus exposition of the gateway's OpenTelemetry metrics."""
    body, content_type = request.app.state.telemetry.metrics_text()
    return Response(body, media_type=content_type)


@get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@get("/readyz")
async def readyz(request: Request) -> Response:
    checks = await request.app.state.readiness()
    ready = all(check["ok"] for check in checks.values())
    degraded = any(check.get("degraded") for check in checks.values())
    return Response({"ready": ready, "degraded": degraded, "checks": checks}, status_code=200 if ready else 503)
