"""Budget views: a caller's own usage, and any tenant's for operators (admin key)."""

from __future__ import annotations

from litestar import Request, get
from litestar.params import FromPath

from gateway.budgets import Budgets, BudgetsUnavailable
from gateway.errors import GatewayError
from gateway.pipeline import Gateway
from policies.schema import TenantSpec


async def _usage(budgets: Budgets, tenant: str, spec: TenantSpec) -> dict:
    """The store being down (fail-closed) or busy is a 503 with Retry-After, as on chat."""
    try:
        return await budgets.usage(tenant, spec)
    except BudgetsUnavailable as exc:
        raise GatewayError(503, f"Budget accounting is unavailable; try again shortly. ({exc})",
                           type="service_unavailable", code="budgets_unavailable",
                           headers={"retry-after": "1"}) from None


@get("/v1/usage")
async def my_usage(request: Request) -> dict:
    """The caller's own tenant only: the key decides which tenant, never a parameter."""
    gateway: Gateway = request.app.state.gateway
    principal = gateway.runtime.keyring.authenticate(request.headers)
    return await _usage(gateway.budgets, principal.tenant, principal.spec)


@get("/admin/tenants/{tenant:str}/usage")
async def tenant_usage(request: Request, tenant: FromPath[str]) -> dict:
    gateway: Gateway = request.app.state.gateway
    runtime = gateway.runtime
    runtime.keyring.require_admin(request.headers)
    spec = runtime.keyring.tenant_spec(tenant)
    if spec is None:
        raise GatewayError(404, f"Unknown tenant '{tenant}'.", code="tenant_not_found")
    return await _usage(gateway.budgets, tenant, spec)
