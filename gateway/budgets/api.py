"""The budgets contract the request pipeline relies on: reserve → settle, and its errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from policies.schema import TenantSpec

RATE_LIMIT = "rate_limit_exceeded"
QUOTA = "insufficient_quota"


class BudgetExceeded(Exception):
    """A window would be exceeded. Carries what the HTTP layer needs for a 429."""

    def __init__(
        self,
        *,
        code: str,
        window: str,
        message: str,
        retry_after: float,
        headers: dict[str, str],
        model: str | None = None,
        limit: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code  # "rate_limit_exceeded" | "insufficient_quota"
        self.window = window  # e.g. "tokens_per_minute"
        self.message = message
        self.retry_after = retry_after  # seconds
        self.headers = headers  # Retry-After + x-ratelimit-*
        self.model = model  # set when a per-model override was exceeded
        self.limit = limit


class BudgetsUnavailable(Exception):
    """The budget store cannot be reached (fail-closed): the HTTP layer answers 503."""


class BudgetsBusy(BudgetsUnavailable):
    """This replica has too many budget operations in flight (local back-pressure): the excess
    caller gets 503 + Retry-After, and the fail mode does NOT flip (the store is fine)."""

    retry_after = 1.0


@dataclass(slots=True)
class Reservation:
    request_id: str
    tenant: str
    model: str
    tokens: int  # the estimate reserved
    usd: float  # the estimate reserved
    headers: dict[str, str]  # x-ratelimit-* after this reservation
    expires_at: float = 0.0  # epoch seconds: end of the current lease (renewed while alive)
    backend: str = ""  # "redis" | "memory": settle goes where reserve went
    keys: tuple[str, ...] = ()  # the store's window keys (also set on memory reservations)
    units: str = ""  # one unit letter per key (q t u c)
    expire_at: tuple[int, ...] = ()  # EXPIREAT of each key (0: none)
    lease: str = ""  # nonce of this reservation: a reused request id is a new lease


@runtime_checkable
class Budgets(Protocol):
    async def reserve(
        self, *, tenant: str, spec: TenantSpec, model: str, request_id: str, tokens: int, usd: float
    ) -> Reservation: ...

    async def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None: ...

    async def usage(self, tenant: str, spec: TenantSpec) -> dict: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...
