"""Per-tenant budgets and rate limits: reserve → settle, never check-then-spend.

Before a call, `reserve` checks EVERY window of the tenant (and of the model's overrides) against
`spent + reserved + this request's estimate` and reserves in all of them, or in none, in one atomic
step: one Lua script on Redis (`state/lua/budgets.lua`), or one synchronous critical
section in `MemoryBudgets`. After the call, `settle` replaces the estimate with the actual usage,
idempotently per reservation, and frees the concurrency slot. A reservation whose lease is not
renewed (a crashed replica) is reclaimed by the next `reserve`/`usage` of the same tenant.

Where things live:

=====================  ==============================================================
module                 concept
=====================  ==============================================================
`api.py`               the contract: `Budgets`, `Reservation`, the errors
`windows.py`           window rules (table), periods, key planning
`counts.py`            decoding the store's replies into (spent, reserved) pairs
`render.py`            x-ratelimit-* headers, 429 messages, the usage document
`memory.py`            one-process backend (embedded default, fail-open fallback)
`redis_store.py`       Redis backend, leases and heartbeats
`share.py`             the fail-open local share
`failover.py`          fail modes, journal and replay
=====================  ==============================================================

Semantics decisions:

* Settle after the reservation was reclaimed: the actual usage is still recorded as spent (money
  was spent upstream), nothing is released twice, reserved never goes negative. A second settle of
  the same reservation is a no-op while its record lives (`tombstone_ttl`, minutes). A settle the
  store has no record of (tombstone expired, record lost in a fail-over, spend journaled while the
  store was down) records the spend into the reservation's windows: spend is never dropped.
* Settled usage lands in the windows the reservation was made in (a call that straddles a minute
  or month boundary is charged to the period it started in).
* Idempotency is per tenant and per lease: a request id that is IN FLIGHT cannot be reserved
  again (`ValueError` → 409); once finished, the same id is a new request.
"""

from gateway.budgets.api import (
    BudgetExceeded,
    Budgets,
    BudgetsBusy,
    BudgetsUnavailable,
    Reservation,
)
from gateway.budgets.failover import FailoverBudgets
from gateway.budgets.memory import MemoryBudgets
from gateway.budgets.redis_store import RedisBudgets
from gateway.budgets.render import openai_duration

__all__ = [
    "BudgetExceeded",
    "Budgets",
    "BudgetsBusy",
    "BudgetsUnavailable",
    "FailoverBudgets",
    "MemoryBudgets",
    "RedisBudgets",
    "Reservation",
    "openai_duration",
]
