"""The budget steps: reserve before any upstream call, settle after it on every exit path.

`reserve` turns the budget store's refusals into the caller's errors (429 with `Retry-After` and
OpenAI's rate-limit headers, or 503 when the store cannot answer). `settle` runs after the reply,
not before it: the caller never waits for the budget store. Settlement tasks are tracked and
drained on shutdown; if a replica dies first, the reservation expires and is reclaimed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

from gateway.auth import Principal
from gateway.budgets import BudgetExceeded, Budgets, BudgetsUnavailable, Reservation
from protocols.errors import GatewayError
from protocols.usage import Usage


def budget_error(exc: BudgetExceeded) -> GatewayError:
    if exc.code == "insufficient_quota":
        kind = "insufficient_quota"
    else:
        kind = "requests" if exc.window in ("requests_per_minute", "concurrent_requests") else "tokens"
    return GatewayError(429, exc.message, type=kind, code=exc.code, headers=dict(exc.headers))


class Accounting:
    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self._background: set[asyncio.Task] = set()

    async def reserve(self, principal: Principal, model: str, request_id: str, tokens: int, usd: float) -> Reservation:
        """Reserve in every window of the tenant at once, or refuse (a `GatewayError`)."""
        try:
            return await self.budgets.reserve(tenant=principal.tenant, spec=principal.spec, model=model,
                                              request_id=request_id, tokens=tokens, usd=usd)
        except BudgetExceeded as exc:
            raise budget_error(exc) from None
        except BudgetsUnavailable as exc:
            retry = str(getattr(exc, "retry_after", None) or 1)
            raise GatewayError(503, "Budget accounting is unavailable; try again shortly.", type="service_unavailable",
                               code="budgets_unavailable", headers={"retry-after": retry}) from None
        except ValueError as exc:  # a request id reused while its reservation is still open
            raise GatewayError(409, str(exc), code="duplicate_request_id") from None

    def settle(self, reservation: Reservation, usage: Usage, usd: float) -> None:
        self.later(self.budgets.settle(reservation, tokens=usage.total_tokens, usd=usd))

    def later(self, coroutine: Coroutine) -> None:
        """Background work that must finish even after the reply (tracked, drained on shutdown)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)
