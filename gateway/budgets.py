"""Per-tenant budgets and rate limits: reserve → settle, never check-then-spend.

Before a call, `reserve` checks EVERY window of the tenant (and of the model's overrides) against
`spent + reserved + this request's estimate` and reserves in all of them, or in none, in one atomic
step: a single Lua script on Redis, or one synchronous critical section in `MemoryBudgets`. After
the call, `settle` replaces the estimate with the actual usage, idempotently per request id, and
frees the concurrency slot. Reservations that are never settled (a crashed replica) are reclaimed
by the next `reserve`/`usage` of the same tenant once their TTL has passed.

Windows (tenant-wide from `spec.limits`; per model from `spec.model_limits[model]`):

==================  =========  =====================  ========================
window              unit       key suffix             code when exceeded
==================  =========  =====================  ========================
requests_per_minute requests   rpm:<epoch-minute>     rate_limit_exceeded
tokens_per_minute   tokens     tpm:<epoch-minute>     rate_limit_exceeded
concurrent_requests in flight  conc                   rate_limit_exceeded
tokens_per_day      tokens     tok:day:2026-11-22     insufficient_quota
tokens_per_month    tokens     tok:month:2026-11      insufficient_quota
usd_per_month       nano-USD   usd:month:2026-11      insufficient_quota
==================  =========  =====================  ========================

A window whose limit is None is not tracked, except the tenant-wide day/month token and USD
windows, which always record spend (the usage endpoint reports them). Periods are UTC; a new
period is a new key, so a reset never overwrites anything. USD is counted in integer nano-dollars
(each request's cost rounded to 1e-9 USD), so sums are exact.

Semantics decisions:

* Settle after the reservation was reclaimed: the actual usage is still recorded as spent (money
  was spent upstream), nothing is released twice, reserved never goes negative. A second settle of
  the same request id is a no-op for as long as its tombstone lives (`tombstone_ttl`, 2 days by
  default); a settle for an id with no record at all is a no-op.
* Settled usage lands in the windows the reservation was made in (a call that straddles a minute
  or month boundary is charged to the period it started in).
* A request id that already has a record (in flight, settled or reclaimed) cannot be reserved
  again: `ValueError`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from gateway.budget_scripts import BUDGET_LUA
from policies.schema import TenantLimits, TenantSpec

log = logging.getLogger("gateway.budgets")

NANO = 1_000_000_000  # nano-USD per USD

RATE_LIMIT = "rate_limit_exceeded"
QUOTA = "insufficient_quota"

# (window name, unit letter, code); the order is the order windows are checked and reported in.
_WINDOWS: tuple[tuple[str, str, str], ...] = (
    ("concurrent_requests", "c", RATE_LIMIT),
    ("requests_per_minute", "q", RATE_LIMIT),
    ("tokens_per_minute", "t", RATE_LIMIT),
    ("tokens_per_day", "t", QUOTA),
    ("tokens_per_month", "t", QUOTA),
    ("usd_per_month", "u", QUOTA),
)
_ALWAYS_RECORDED = frozenset({"tokens_per_day", "tokens_per_month", "usd_per_month"})
_CONCURRENCY_RETRY_AFTER = 1.0


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


@dataclass(slots=True)
class Reservation:
    request_id: str
    tenant: str
    model: str
    tokens: int  # the estimate reserved
    usd: float  # the estimate reserved
    headers: dict[str, str]  # x-ratelimit-* after this reservation
    expires_at: float = 0.0  # epoch seconds after which it may be reclaimed
    backend: str = ""  # "redis" | "memory": settle goes where reserve went
    keys: tuple[str, ...] = ()  # the window keys reserved in


@runtime_checkable
class Budgets(Protocol):
    async def reserve(
        self, *, tenant: str, spec: TenantSpec, model: str, request_id: str, tokens: int, usd: float
    ) -> Reservation: ...

    async def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None: ...

    async def usage(self, tenant: str, spec: TenantSpec) -> dict: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Windows: which keys a request touches, their limits, periods and expiries


@dataclass(frozen=True, slots=True)
class _Window:
    name: str
    unit: str  # q t u c
    code: str
    model: str | None  # None: tenant-wide
    key: str
    limit: int  # in the unit (nano-USD for usd); -1: recorded, not enforced
    resets_at: float | None  # epoch seconds; None for concurrency
    expire_at: int  # EXPIREAT epoch seconds; 0: never


def _usd_to_nano(usd: float) -> int:
    if usd < 0 or math.isnan(usd):
        raise ValueError(f"usd must be >= 0, got {usd!r}")
    return round(usd * NANO)


class _Periods:
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


class _Planner:
    def __init__(self, prefix: str) -> None:
        if "\n" in prefix or "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain newlines or braces")
        self.prefix = prefix
        self._periods: _Periods | None = None

    def periods(self, now: float) -> _Periods:
        p = self._periods
        if p is None or int(now // 60) != p.minute:
            p = self._periods = _Periods(now)
        return p

    def base(self, tenant: str) -> str:
        if not tenant or any(ch in tenant for ch in "{}\n"):
            raise ValueError(f"invalid tenant name {tenant!r}")
        return f"{self.prefix}{{{tenant}}}:"

    def active_key(self, tenant: str) -> str:
        return self.base(tenant) + "rsv"

    def record_prefix(self, tenant: str) -> str:
        return self.base(tenant) + "rsv:"

    def windows(self, tenant: str, limits: TenantLimits, model: str | None, now: float) -> list[_Window]:
        p = self.periods(now)
        base = self.base(tenant)
        if model is not None:
            if not model or any(ch in model for ch in "{}\n"):
                raise ValueError(f"invalid model name {model!r}")
            base += f"m:{model}:"
        out: list[_Window] = []
        for name, unit, code in _WINDOWS:
            raw = getattr(limits, name)
            if raw is None and (model is not None or name not in _ALWAYS_RECORDED):
                continue
            limit = -1 if raw is None else (_usd_to_nano(raw) if unit == "u" else int(raw))
            if name == "concurrent_requests":
                key, resets, exp = base + "conc", None, 0
            elif name == "requests_per_minute":
                key, resets, exp = f"{base}rpm:{p.minute}", p.minute_end, int(p.minute_end) + 60
            elif name == "tokens_per_minute":
                key, resets, exp = f"{base}tpm:{p.minute}", p.minute_end, int(p.minute_end) + 60
            elif name == "tokens_per_day":
                key, resets, exp = f"{base}tok:day:{p.day}", p.day_end, int(p.day_end) + 2 * 86400
            elif name == "tokens_per_month":
                key, resets, exp = f"{base}tok:month:{p.month}", p.month_end, int(p.month_end) + 35 * 86400
            else:
                key, resets, exp = f"{base}usd:month:{p.month}", p.month_end, int(p.month_end) + 35 * 86400
            out.append(_Window(name, unit, code, model, key, limit, resets, exp))
        return out

    def plan(self, tenant: str, spec: TenantSpec, model: str, now: float) -> list[_Window]:
        ws = self.windows(tenant, spec.limits, None, now)
        override = spec.model_limits.get(model)
        if override is not None:
            ws += self.windows(tenant, override, model, now)
        return ws


def _amount(unit: str, tokens: int, nano: int) -> int:
    return tokens if unit == "t" else nano if unit == "u" else 1


# ---------------------------------------------------------------------------------------------
# Headers, errors, usage documents (shared by both stores)


def openai_duration(seconds: float) -> str:
    """Durations the way OpenAI's x-ratelimit-reset-* headers write them: `20ms`, `1s`, `6m0s`."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{h}h" if h else ""
    if h or m:
        out += f"{m}m"
    return f"{out}{s}s"


def _headers(windows: Sequence[_Window], values: Sequence[int], now: float) -> dict[str, str]:
    """x-ratelimit-* for the per-minute windows: the tightest (least remaining) of tenant/model."""
    out: dict[str, str] = {}
    for name, suffix in (("requests_per_minute", "requests"), ("tokens_per_minute", "tokens")):
        best: tuple[int, int, float] | None = None
        for i, w in enumerate(windows):
            if w.name != name or w.limit < 0:
                continue
            remaining = max(0, w.limit - values[2 * i] - values[2 * i + 1])
            if best is None or remaining < best[1]:
                best = (w.limit, remaining, (w.resets_at or now) - now)
        if best is not None:
            out[f"x-ratelimit-limit-{suffix}"] = str(best[0])
            out[f"x-ratelimit-remaining-{suffix}"] = str(best[1])
            out[f"x-ratelimit-reset-{suffix}"] = openai_duration(best[2])
    return out


def _reservation(
    request_id: str, tenant: str, model: str, tokens: int, usd: float, windows: Sequence[_Window],
    values: Sequence[int], now: float, expires_at: float, backend: str,
) -> Reservation:
    return Reservation(
        request_id=request_id, tenant=tenant, model=model, tokens=tokens, usd=usd,
        headers=_headers(windows, values, now), expires_at=expires_at, backend=backend,
        keys=tuple(w.key for w in windows),
    )


def _exceeded(
    tenant: str, windows: Sequence[_Window], values: Sequence[int], tokens: int, nano: int, now: float
) -> BudgetExceeded:
    failing: list[tuple[float, int]] = []
    for i, w in enumerate(windows):
        if w.limit < 0:
            continue
        if values[2 * i] + values[2 * i + 1] + _amount(w.unit, tokens, nano) > w.limit:
            ra = _CONCURRENCY_RETRY_AFTER if w.resets_at is None else max(0.001, w.resets_at - now)
            failing.append((ra, i))
    if not failing:  # the store refused but the numbers it returned do not show why: be safe
        failing.append((_CONCURRENCY_RETRY_AFTER, 0))
    # The longest wait is the truthful one: no retry can succeed before every failing window frees.
    retry_after, i = max(failing)
    w = windows[i]
    used = values[2 * i] + values[2 * i + 1]
    want = _amount(w.unit, tokens, nano)
    if w.unit == "u":
        limit_s, used_s, want_s = f"${w.limit / NANO:.6g}", f"${used / NANO:.6g}", f"${want / NANO:.6g}"
    else:
        limit_s, used_s, want_s = str(w.limit), str(used), str(want)
    scope = f"tenant {tenant!r}" + (f", model {w.model!r}" if w.model else "")
    what = "Rate limit reached" if w.code == RATE_LIMIT else "Quota exceeded"
    message = (
        f"{what} for {scope} on {w.name}: limit {limit_s}, in use {used_s}, requested {want_s}. "
        + (
            f"Try again in {openai_duration(retry_after)}."
            if w.resets_at is not None
            else "Try again when a request finishes."
        )
    )
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    headers.update(_headers(windows, values, now))
    return BudgetExceeded(
        code=w.code,
        window=w.name,
        message=message,
        retry_after=retry_after,
        headers=headers,
        model=w.model,
        limit=(w.limit / NANO if w.unit == "u" else w.limit),
    )


def _usage_doc(
    tenant: str, groups: Sequence[tuple[str | None, list[_Window]]], values: Sequence[int], now: float, backend: str
) -> dict:
    doc: dict[str, Any] = {"tenant": tenant, "backend": backend, "windows": {}, "models": {}}
    j = 0
    for model, ws in groups:
        target = doc["windows"] if model is None else doc["models"].setdefault(model, {})
        for w in ws:
            s, r = values[j], values[j + 1]
            j += 2
            limit: float | int | None = None if w.limit < 0 else w.limit
            remaining: float | int | None = None if w.limit < 0 else max(0, w.limit - s - r)
            if w.unit == "u":
                s, r = s / NANO, r / NANO  # type: ignore[assignment]
                limit = None if limit is None else limit / NANO
                remaining = None if remaining is None else remaining / NANO
            target[w.name] = {
                "limit": limit,
                "spent": s,
                "reserved": r,
                "remaining": remaining,
                "resets_at": None
                if w.resets_at is None
                else datetime.fromtimestamp(w.resets_at, UTC).isoformat().replace("+00:00", "Z"),
            }
    return doc


def _check_request(request_id: str, tokens: int) -> None:
    if not request_id:
        raise ValueError("request_id must be non-empty")
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")


# ---------------------------------------------------------------------------------------------
# In-memory store


class _MemRecord:
    __slots__ = ("state", "tokens", "nano", "windows", "expires_at", "drop_at")

    def __init__(self, tokens: int, nano: int, windows: list[_Window], expires_at: float) -> None:
        self.state = "r"  # r reserved | x reclaimed | s settled
        self.tokens = tokens
        self.nano = nano
        self.windows = windows
        self.expires_at = expires_at
        self.drop_at = math.inf  # tombstone expiry


class MemoryBudgets:
    """The embedded default (one process). Same semantics as `RedisBudgets`; every operation runs
    synchronously under one lock, so no await can interleave between check and reserve."""

    def __init__(
        self,
        *,
        reservation_ttl: float = 600.0,
        tombstone_ttl: float = 2 * 86400.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.reservation_ttl = reservation_ttl
        self.tombstone_ttl = tombstone_ttl
        self._now = now
        self._plan = _Planner("")
        self._lock = threading.Lock()
        self._counters: dict[str, list[float]] = {}  # key -> [spent, reserved, expire_at (0: never)]
        self._records: dict[tuple[str, str], _MemRecord] = {}
        self._active: dict[str, list[tuple[float, str]]] = {}  # tenant -> heap of (expiry, request id)
        self._ops = 0

    # -- primitives mirroring the Lua script
    def _get(self, key: str, now: float) -> list[float] | None:
        c = self._counters.get(key)
        if c is not None and c[2] and c[2] <= now:
            del self._counters[key]
            return None
        return c

    def _release(self, key: str, amt: int, now: float) -> None:
        c = self._get(key, now)
        if c is not None:
            c[1] = max(0, c[1] - amt)

    def _spend(self, w: _Window, amt: int, now: float) -> None:
        if amt == 0:
            return
        c = self._get(w.key, now)
        if c is None:
            if w.expire_at and w.expire_at <= now:
                return  # EXPIREAT in the past deletes the key at once
            c = self._counters[w.key] = [0, 0, w.expire_at]
        c[0] += amt

    def _reclaim(self, tenant: str, now: float) -> None:
        heap = self._active.get(tenant)
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            rec = self._records.get((tenant, rid))
            if rec is not None and rec.state == "r":
                for w in rec.windows:
                    self._release(w.key, _amount(w.unit, rec.tokens, rec.nano), now)
                rec.state = "x"
                rec.drop_at = now + self.tombstone_ttl
        if heap is not None and not heap:
            del self._active[tenant]

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops % 4096:
            return
        for key in [k for k, c in self._counters.items() if c[2] and c[2] <= now]:
            del self._counters[key]
        for rk in [k for k, r in self._records.items() if r.drop_at <= now]:
            del self._records[rk]

    # -- API
    async def reserve(
        self, *, tenant: str, spec: TenantSpec, model: str, request_id: str, tokens: int, usd: float
    ) -> Reservation:
        _check_request(request_id, tokens)
        nano = _usd_to_nano(usd)
        with self._lock:
            now = self._now()
            windows = self._plan.plan(tenant, spec, model, now)
            self._sweep(now)
            self._reclaim(tenant, now)
            rec = self._records.get((tenant, request_id))
            if rec is not None and rec.drop_at > now:
                raise ValueError(f"request id {request_id!r} was already reserved")
            values: list[int] = []
            ok = True
            for w in windows:
                c = self._get(w.key, now)
                s, r = (int(c[0]), int(c[1])) if c is not None else (0, 0)
                values += (s, r)
                if w.limit >= 0 and s + r + _amount(w.unit, tokens, nano) > w.limit:
                    ok = False
            if not ok:
                raise _exceeded(tenant, windows, values, tokens, nano, now)
            for i, w in enumerate(windows):
                amt = _amount(w.unit, tokens, nano)
                c = self._get(w.key, now)
                if c is None:
                    c = self._counters[w.key] = [0, 0, w.expire_at]
                c[1] += amt
                values[2 * i + 1] += amt
            expires_at = now + self.reservation_ttl
            self._records[(tenant, request_id)] = _MemRecord(tokens, nano, windows, expires_at)
            heapq.heappush(self._active.setdefault(tenant, []), (expires_at, request_id))
        return _reservation(request_id, tenant, model, tokens, usd, windows, values, now, expires_at, "memory")

    async def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None:
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        nano = _usd_to_nano(usd)
        with self._lock:
            now = self._now()
            rec = self._records.get((reservation.tenant, reservation.request_id))
            if rec is None or rec.drop_at <= now or rec.state == "s":
                return
            releasing = rec.state == "r"
            for w in rec.windows:
                if releasing:
                    self._release(w.key, _amount(w.unit, rec.tokens, rec.nano), now)
                if w.unit != "c":
                    self._spend(w, _amount(w.unit, tokens, nano), now)
            rec.state = "s"
            rec.drop_at = now + self.tombstone_ttl
            # the heap entry (if any) is dropped lazily by _reclaim

    async def usage(self, tenant: str, spec: TenantSpec) -> dict:
        with self._lock:
            now = self._now()
            self._reclaim(tenant, now)
            groups = _usage_groups(self._plan, tenant, spec, now)
            values: list[int] = []
            for _, ws in groups:
                for w in ws:
                    c = self._get(w.key, now)
                    values += (int(c[0]), int(c[1])) if c is not None else (0, 0)
        return _usage_doc(tenant, groups, values, now, "memory")

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def _usage_groups(
    plan: _Planner, tenant: str, spec: TenantSpec, now: float
) -> list[tuple[str | None, list[_Window]]]:
    groups: list[tuple[str | None, list[_Window]]] = [(None, plan.windows(tenant, spec.limits, None, now))]
    for model, limits in sorted(spec.model_limits.items()):
        ws = plan.windows(tenant, limits, model, now)
        if ws:
            groups.append((model, ws))
    return groups


# ---------------------------------------------------------------------------------------------
# Redis store

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    asyncio.TimeoutError,
)


def connect_redis(url: str, *, timeout: float = 0.5, retries: int = 1, **kwargs: Any) -> aioredis.Redis:
    """A client suited to budgets: short timeouts and few retries, so an outage is noticed in
    about a second instead of redis-py's default ten retries with backoff."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries),
        **kwargs,
    )


class RedisBudgets:
    """Budgets in Redis (or Redis Cluster: every key of a tenant shares the `{tenant}` hash tag).
    reserve, settle and usage are one EVALSHA each."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "gw:",
        reservation_ttl: float = 600.0,
        *,
        tombstone_ttl: float = 2 * 86400.0,
        reclaim_batch: int = 64,
        now: Callable[[], float] = time.time,
        close_client: bool = True,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.reservation_ttl = reservation_ttl
        self.tombstone_ttl = tombstone_ttl
        self.reclaim_batch = reclaim_batch
        self._now = now
        self._close_client = close_client
        self._plan = _Planner(prefix)
        self._script = redis.register_script(BUDGET_LUA)

    def _head(self, op: str, tenant: str, now: float) -> list[Any]:
        tomb = max(1, int(self.tombstone_ttl))
        return [op, int(now * 1000), self._plan.record_prefix(tenant), self.reclaim_batch, tomb]

    async def _run(self, keys: list[str], args: list[Any]) -> list[int]:
        try:
            return await self._script(keys=keys, args=args)
        except _UNAVAILABLE as exc:
            raise BudgetsUnavailable(f"budget store unreachable: {exc}") from exc

    async def reserve(
        self, *, tenant: str, spec: TenantSpec, model: str, request_id: str, tokens: int, usd: float
    ) -> Reservation:
        _check_request(request_id, tokens)
        nano = _usd_to_nano(usd)
        now = self._now()
        windows = self._plan.plan(tenant, spec, model, now)
        expires_at = now + self.reservation_ttl
        keys = [self._plan.active_key(tenant), self._plan.record_prefix(tenant) + request_id]
        args = self._head("R", tenant, now)
        args += [int(expires_at * 1000), tokens, nano, request_id, "".join(w.unit for w in windows)]
        for w in windows:
            keys.append(w.key)
            args += (w.limit, w.expire_at)
        out = await self._run(keys, args)
        status, values = out[0], out[1:]
        if status == -1:
            raise ValueError(f"request id {request_id!r} was already reserved")
        if status == 0:
            raise _exceeded(tenant, windows, values, tokens, nano, now)
        return _reservation(request_id, tenant, model, tokens, usd, windows, values, now, expires_at, "redis")

    async def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None:
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        nano = _usd_to_nano(usd)
        t = reservation.tenant
        keys = [self._plan.active_key(t), self._plan.record_prefix(t) + reservation.request_id, *reservation.keys]
        args = self._head("S", t, self._now()) + [tokens, nano, reservation.request_id]
        await self._run(keys, args)

    async def usage(self, tenant: str, spec: TenantSpec) -> dict:
        now = self._now()
        groups = _usage_groups(self._plan, tenant, spec, now)
        keys = [self._plan.active_key(tenant)] + [w.key for _, ws in groups for w in ws]
        values = await self._run(keys, self._head("U", tenant, now))
        return _usage_doc(tenant, groups, values, now, "redis")

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (*_UNAVAILABLE, redis_errors.RedisError):
            return False

    async def aclose(self) -> None:
        if self._close_client:
            await self.redis.aclose()


# ---------------------------------------------------------------------------------------------
# Failover


class FailoverBudgets:
    """Redis first. Redis down: mode "closed" (default) → `BudgetsUnavailable` (HTTP 503);
    mode "open" → the local `MemoryBudgets` serves (limits then hold per replica, not globally),
    one warning per outage, `fallback_events` counts reserves served locally, `degraded` is True.

    While Redis is considered down it is probed at most every `probe_interval` seconds (other
    calls do not wait on it). A settle goes to the backend its reserve used; a settle that cannot
    reach Redis is queued (bounded) and replayed when Redis answers again (settle is idempotent,
    so replays are safe); it never raises for unavailability, since the response has already gone.
    """

    def __init__(
        self,
        redis: RedisBudgets,
        memory: MemoryBudgets | None = None,
        *,
        mode: Literal["closed", "open"] = "closed",
        probe_interval: float = 1.0,
        max_pending_settles: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in ("closed", "open"):
            raise ValueError(f"mode must be 'closed' or 'open', got {mode!r}")
        self.primary = redis
        self.memory = memory if memory is not None else MemoryBudgets(reservation_ttl=redis.reservation_ttl, now=redis._now)
        self.mode = mode
        self.probe_interval = probe_interval
        self.fallback_events = 0
        self.outages = 0
        self._down = False
        self._next_probe = 0.0
        self._clock = monotonic
        self._pending: deque[tuple[Reservation, int, float]] = deque(maxlen=max_pending_settles)

    @property
    def degraded(self) -> bool:
        return self._down

    @property
    def pending_settles(self) -> int:
        return len(self._pending)

    def _mark_down(self, exc: BaseException) -> None:
        self._next_probe = self._clock() + self.probe_interval
        if not self._down:
            self._down = True
            self.outages += 1
            action = "serving budgets from local memory" if self.mode == "open" else "refusing requests (503)"
            log.warning("budget store unreachable (%s); fail-%s: %s", exc, self.mode, action)

    async def _mark_up(self) -> None:
        if self._down:
            self._down = False
            log.warning("budget store reachable again; %d queued settles to replay", len(self._pending))
        while self._pending:
            res, tokens, usd = self._pending[0]
            try:
                await self.primary.settle(res, tokens=tokens, usd=usd)
            except BudgetsUnavailable as exc:
                self._mark_down(exc)
                return
            self._pending.popleft()

    def _skip_primary(self) -> bool:
        return self._down and self._clock() < self._next_probe

    async def reserve(
        self, *, tenant: str, spec: TenantSpec, model: str, request_id: str, tokens: int, usd: float
    ) -> Reservation:
        kw = dict(tenant=tenant, spec=spec, model=model, request_id=request_id, tokens=tokens, usd=usd)
        err: BaseException | None = None
        if not self._skip_primary():
            try:
                res = await self.primary.reserve(**kw)  # type: ignore[arg-type]
            except BudgetsUnavailable as exc:
                self._mark_down(exc)
                err = exc
            else:
                if self._down or self._pending:
                    await self._mark_up()
                return res
        if self.mode == "closed":
            raise BudgetsUnavailable(str(err) if err else "budget store unreachable (probing)")
        self.fallback_events += 1
        return await self.memory.reserve(**kw)  # type: ignore[arg-type]

    async def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None:
        if reservation.backend == "memory":
            await self.memory.settle(reservation, tokens=tokens, usd=usd)
            return
        if self._skip_primary():
            self._pending.append((reservation, tokens, usd))
            return
        try:
            await self.primary.settle(reservation, tokens=tokens, usd=usd)
        except BudgetsUnavailable as exc:
            self._mark_down(exc)
            self._pending.append((reservation, tokens, usd))

    async def usage(self, tenant: str, spec: TenantSpec) -> dict:
        if not self._skip_primary():
            try:
                return await self.primary.usage(tenant, spec)
            except BudgetsUnavailable as exc:
                self._mark_down(exc)
                if self.mode == "closed":
                    raise
        elif self.mode == "closed":
            raise BudgetsUnavailable("budget store unreachable (probing)")
        doc = await self.memory.usage(tenant, spec)
        doc["degraded"] = True
        return doc

    async def ping(self) -> bool:
        """Redis reachable (clears `degraded`, replays queued settles). In mode "open" the gateway
        can still serve without it, so this is True either way; read `degraded` for the detail."""
        ok = await self.primary.ping()
        if ok:
            await self._mark_up()
        elif not self._down:
            self._mark_down(BudgetsUnavailable("ping failed"))
        return ok or self.mode == "open"

    async def aclose(self) -> None:
        await self.primary.aclose()
        await self.memory.aclose()


__all__ = [
    "BudgetExceeded",
    "Budgets",
    "BudgetsUnavailable",
    "FailoverBudgets",
    "MemoryBudgets",
    "RedisBudgets",
    "Reservation",
    "connect_redis",
    "openai_duration",
]
