"""Window rules: which keys a request touches, their limits, periods and expiries.

Windows (tenant-wide from `spec.limits`; per model from `spec.model_limits[model]`):

==================  =========  =====================  ========================
window              unit       key suffix             code when exceeded
==================  =========  =====================  ========================
concurrent_requests in flight  conc                   rate_limit_exceeded
requests_per_minute requests   rpm:<epoch-minute>     rate_limit_exceeded
tokens_per_minute   tokens     tpm:<epoch-minute>     rate_limit_exceeded
tokens_per_day      tokens     tok:day:2026-11-22     insufficient_quota
tokens_per_month    tokens     tok:month:2026-11      insufficient_quota
usd_per_month       nano-USD   usd:month:2026-11      insufficient_quota
==================  =========  =====================  ========================

A window whose limit is None is not tracked, except the tenant-wide day/month token and USD
windows, which always record spend (the usage endpoint reports them). Periods are UTC; a new
period is a new key, so a reset never overwrites anything. USD is counted in integer nano-dollars
(each request's cost rounded to 1e-9 USD), so sums are exact. Every key of a tenant carries the
`{tenant}` hash tag: one script call touches one Redis Cluster slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.budgets.api import QUOTA, RATE_LIMIT
from policies.schema import TenantLimits, TenantSpec

NANO = 1_000_000_000  # nano-USD per USD
DAY = 86400


class Periods:
    """UTC period names and boundaries for one instant (cached per minute: it is on the hot path)."""

    __slots__ = ("minute", "minute_end", "day", "day_end", "month", "month_end")

    def __init__(self, now: float) -> None:
        self.minute = int(now // 60)
        self.minute_end = (self.minute + 1) * 60.0
        dt = datetime.fromtimestamp(self.minute * 60, UTC)
        self.day = dt.strftime("%Y-%m-%d")
        day_start = dt.replace(hour=0, minute=0, second=0, microsecond=0)
        self.day_end = (day_start + timedelta(days=1)).timestamp()
        self.month = dt.strftime("%Y-%m")
        nxt = datetime(dt.year + (dt.month == 12), dt.month % 12 + 1, 1, tzinfo=UTC)
        self.month_end = nxt.timestamp()


@dataclass(frozen=True, slots=True)
class Rule:
    name: str  # the TenantLimits field
    unit: str  # q = requests, t = tokens, u = nano-USD, c = concurrency slot
    code: str
    always_recorded: bool  # tenant-wide spend is kept even without a limit
    suffix: Callable[[Periods], str]
    resets: Callable[[Periods], float | None]
    keep: int | None  # seconds the key outlives its period; None: no expiry


# The order is the order windows are checked and reported in.
RULES: tuple[Rule, ...] = (
    Rule("concurrent_requests", "c", RATE_LIMIT, False, lambda p: "conc", lambda p: None, None),
    Rule("requests_per_minute", "q", RATE_LIMIT, False, lambda p: f"rpm:{p.minute}", lambda p: p.minute_end, 60),
    Rule("tokens_per_minute", "t", RATE_LIMIT, False, lambda p: f"tpm:{p.minute}", lambda p: p.minute_end, 60),
    Rule("tokens_per_day", "t", QUOTA, True, lambda p: f"tok:day:{p.day}", lambda p: p.day_end, 2 * DAY),
    Rule("tokens_per_month", "t", QUOTA, True, lambda p: f"tok:month:{p.month}", lambda p: p.month_end, 35 * DAY),
    Rule("usd_per_month", "u", QUOTA, True, lambda p: f"usd:month:{p.month}", lambda p: p.month_end, 35 * DAY),
)
RULE_BY_NAME = {r.name: r for r in RULES}


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    unit: str
    code: str
    model: str | None  # None: tenant-wide
    key: str
    limit: int  # in the unit (nano-USD for usd); -1: recorded, not enforced
    resets_at: float | None  # epoch seconds; None for concurrency
    expire_at: int  # EXPIREAT epoch seconds; 0: never

    def amount(self, tokens: int, nano: int) -> int:
        return amount(self.unit, tokens, nano)


def amount(unit: str, tokens: int, nano: int) -> int:
    return tokens if unit == "t" else nano if unit == "u" else 1


def usd_to_nano(usd: float) -> int:
    if usd < 0 or math.isnan(usd):
        raise ValueError(f"usd must be >= 0, got {usd!r}")
    return round(usd * NANO)


def check_request(request_id: str, tokens: int) -> None:
    if not request_id:
        raise ValueError("request_id must be non-empty")
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")


def _check_name(kind: str, value: str) -> str:
    if not value or any(ch in value for ch in "{}\n"):
        raise ValueError(f"invalid {kind} name {value!r}")
    return value


class Planner:
    """Window keys for a tenant under one prefix."""

    def __init__(self, prefix: str) -> None:
        if "\n" in prefix or "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain newlines or braces")
        self.prefix = prefix
        self._periods: Periods | None = None
        self._planned: dict[tuple[str, TenantLimits, str | None], tuple[Window, ...]] = {}

    def periods(self, now: float) -> Periods:
        p = self._periods
        if p is None or int(now // 60) != p.minute:
            p = self._periods = Periods(now)
            self._planned = {}  # window keys change with the minute
        return p

    def base(self, tenant: str) -> str:
        return f"{self.prefix}{{{_check_name('tenant', tenant)}}}:"

    def active_key(self, tenant: str) -> str:
        return self.base(tenant) + "rsv"

    def record_prefix(self, tenant: str) -> str:
        return self.base(tenant) + "rsv:"

    def windows(self, tenant: str, limits: TenantLimits, model: str | None, now: float) -> list[Window]:
        """The windows of one limits block (cached per minute: planning is on the hot path)."""
        p = self.periods(now)
        key = (tenant, limits, model)
        cached = self._planned.get(key)
        if cached is None:
            if len(self._planned) > 100_000:
                self._planned.clear()
            cached = self._planned[key] = tuple(self._windows(tenant, limits, model, p))
        return list(cached)

    def _windows(self, tenant: str, limits: TenantLimits, model: str | None, p: Periods) -> list[Window]:
        base = self.base(tenant) + ("" if model is None else f"m:{_check_name('model', model)}:")
        out: list[Window] = []
        for rule in RULES:
            raw = getattr(limits, rule.name)
            if raw is None and (model is not None or not rule.always_recorded):
                continue
            limit = -1 if raw is None else (usd_to_nano(raw) if rule.unit == "u" else int(raw))
            resets = rule.resets(p)
            expire_at = 0 if rule.keep is None or resets is None else int(resets) + rule.keep
            out.append(Window(rule.name, rule.unit, rule.code, model, base + rule.suffix(p), limit, resets, expire_at))
        return out

    def plan(self, tenant: str, spec: TenantSpec, model: str, now: float) -> list[Window]:
        ws = self.windows(tenant, spec.limits, None, now)
        override = spec.model_limits.get(model)
        if override is not None:
            ws += self.windows(tenant, override, model, now)
        return ws

    def usage_groups(self, tenant: str, spec: TenantSpec, now: float) -> list[tuple[str | None, list[Window]]]:
        groups: list[tuple[str | None, list[Window]]] = [(None, self.windows(tenant, spec.limits, None, now))]
        for model, limits in sorted(spec.model_limits.items()):
            ws = self.windows(tenant, limits, model, now)
            if ws:
                groups.append((model, ws))
        return groups
