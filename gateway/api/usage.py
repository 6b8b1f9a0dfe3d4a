"""Budget views: a caller's own usage, and any tenant's for operators (admin key)."""

from __future__ import annotations

from litestar import Request, get

from gateway.errors import GatewayError
from gateway.pipeline import Gateway


@get("/v1/usage")
async def my_usage(request: Request) -> dict:
    """The caller's own tenant only: the key decides which tenant, never a parameter."""
    gateway: Gateway = request.app.state.gateway
    principal = gateway.runtime.keyring.authenticate(request.headers)
    return await gateway.budgets.usage(principal.tenant, principal.spec)


@get("/admin/tenants/{tenant:str}/usage")
async def tenant_usage(request: Request, tenant: str) -> dict:
    gateway: Gateway = request.app.state.gateway
    runtime = gateway.runtime
    runtime.keyring.require_admin(request.headers)
    spec = runtime.keyring.tenant_spec(tenant)
    if spec is None:
        raise GatewayError(404, f"Unknown tenant '{tenant}'.", code="tenant_not_found")
    return await gateway.budgets.usage(tenant, spec)
