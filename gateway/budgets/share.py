"""The fail-open local share: how much ONE replica may admit while the store is unreachable.

Per limited window of the tenant (and of each per-model override):

* quota windows (tokens per day/month, USD per month): what remained at this replica's last
  good read of the store (limit - spent - reserved), divided by the number of live replicas,
  rounded down. A window never read (a tenant first seen during the outage) gets limit / N.
* rate windows (requests/tokens per minute, concurrency): limit / N, rounded up (they refill
  every minute, so the last read says little).

So the replicas together admit at most what remained at their last reads: the overspend of an
outage is bounded by how stale those reads are (spend by other replicas after them), plus
limit / N per replica for windows never read. It is measured after the journal is replayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from gateway.budgets.api import RATE_LIMIT
from gateway.budgets.counts import Count
from gateway.budgets.windows import NANO, RULES
from policies.schema import TenantLimits, TenantSpec

Seen = Mapping[tuple[str, str, str | None], Count]


def _share(tenant: str, limits: TenantLimits, model: str | None, seen: Seen, replicas: int) -> TenantLimits:
    changes: dict[str, float | int] = {}
    for rule in RULES:
        raw = getattr(limits, rule.name)
        if raw is None:
            continue
        last = seen.get((tenant, rule.name, model))
        base = float(raw)
        if rule.code != RATE_LIMIT and last is not None:
            base = max(0.0, raw - last.used / (NANO if rule.unit == "u" else 1))
        share = base / replicas
        changes[rule.name] = share if rule.unit == "u" else (math.ceil(share) if rule.code == RATE_LIMIT else int(share))
    return msgspec.structs.replace(limits, **changes)


def local_share(tenant: str, spec: TenantSpec, seen: Seen, replicas: int) -> TenantSpec:
    n = max(1, replicas)
    return msgspec.structs.replace(
        spec,
        limits=_share(tenant, spec.limits, None, seen, n),
        model_limits={m: _share(tenant, lim, m, seen, n) for m, lim in spec.model_limits.items()},
    )
