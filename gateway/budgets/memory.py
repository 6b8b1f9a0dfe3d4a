"""Budgets in one process: the embedded default, and the local fallback while Redis is down.

Same semantics as the Lua script (`state/lua/budgets.lua`), op for op; every operation
runs synchronously under one lock, so no await can interleave between check and reserve.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
import uuid
from collections.abc import Callable

from gateway.budgets.api import Reservation
from gateway.budgets.counts import Count
from gateway.budgets.render import exceeded, reservation, usage_doc
from gateway.budgets.windows import Planner, Window, amount, check_request, usd_to_nano
from policies.schema import TenantSpec


class _Record:
    __slots__ = ("state", "tokens", "nano", "windows", "lease", "previous", "drop_at")

    def __init__(self, tokens: int, nano: int, windows: list[Window], lease: str, previous: str = "") -> None:
        self.state = "r"  # r reserved | x reclaimed | s settled
        self.tokens = tokens
        self.nano = nano
        self.windows = windows
        self.lease = lease
        self.previous = previous  # the settled lease this id had before (its replays stay no-ops)
        self.drop_at = math.inf  # tombstone expiry


class MemoryBudgets:
    def __init__(
        self,
        *,
        reservation_ttl: float = 600.0,
        tombstone_ttl: float = 300.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.reservation_ttl = reservation_ttl
        self.tombstone_ttl = tombstone_ttl
        self._now = now
        self._plan = Planner("")
        self._lock = threading.Lock()
        self._counters: dict[str, list[float]] = {}  # key -> [spent, reserved, expire_at (0: never)]
        self._records: dict[tuple[str, str], _Record] = {}
        self._active: dict[str, list[tuple[float, str, str]]] = {}  # tenant -> heap of (expiry, id, lease)
        self._ops = 0

    # -- primitives mirroring the Lua script
    def _get(self, key: str, now: float) -> list[float] | None:
        c = self._counters.get(key)
        if c is not None and c[2] and c[2] <= now:
            del self._counters[key]
            return None
        return c

    def _count(self, key: str, now: float) -> Count:
        c = self._get(key, now)
        return Count(int(c[0]), int(c[1])) if c is not None else Count()

    def _release(self, key: str, amt: int, now: float) -> None:
        c = self._get(key, now)
        if c is not None:
            c[1] = max(0, c[1] - amt)

    def _spend(self, key: str, amt: int, expire_at: int, now: float) -> None:
        if amt == 0:
            return
        c = self._get(key, now)
        if c is None:
            if expire_at and expire_at <= now:
                return  # EXPIREAT in the past deletes the key at once
            c = self._counters[key] = [0, 0, expire_at]
        c[0] += amt

    def _release_record(self, rec: _Record, now: float) -> None:
        for w in rec.windows:
            self._release(w.key, w.amount(rec.tokens, rec.nano), now)

    def _reclaim(self, tenant: str, now: float) -> None:
        heap = self._active.get(tenant)
        while heap and heap[0][0] <= now:
            _, rid, lease = heapq.heappop(heap)
            rec = self._records.get((tenant, rid))
            if rec is not None and rec.state == "r" and rec.lease == lease:
                self._release_record(rec, now)
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
        check_request(request_id, tokens)
        nano = usd_to_nano(usd)
        with self._lock:
            now = self._now()
            windows = self._plan.plan(tenant, spec, model, now)
            self._sweep(now)
            self._reclaim(tenant, now)
            rec = self._records.get((tenant, request_id))
            if rec is not None and rec.state == "r":
                raise ValueError(f"request id {request_id!r} is already in flight")
            counts = [self._count(w.key, now) for w in windows]
            if any(w.limit >= 0 and c.used + w.amount(tokens, nano) > w.limit for w, c in zip(windows, counts)):
                raise exceeded(tenant, windows, counts, tokens, nano, now)
            for i, w in enumerate(windows):
                amt = w.amount(tokens, nano)
                c = self._get(w.key, now)
                if c is None:
                    c = self._counters[w.key] = [0, 0, w.expire_at]
                c[1] += amt
                counts[i] = counts[i].plus_reserved(amt)
            expires_at = now + self.reservation_ttl
            lease = uuid.uuid4().hex[:12]
            previous = rec.lease if rec is not None and rec.state == "s" else ""
            self._records[(tenant, request_id)] = _Record(tokens, nano, windows, lease, previous)
            heapq.heappush(self._active.setdefault(tenant, []), (expires_at, request_id, lease))
        return reservation(request_id, tenant, model, tokens, usd, windows, counts, now, expires_at, "memory", lease)

    async def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None:
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        nano = usd_to_nano(usd)
        with self._lock:
            now = self._now()
            rk = (reservation.tenant, reservation.request_id)
            rec = self._records.get(rk)
            if rec is not None and rec.drop_at <= now:
                del self._records[rk]
                rec = None
            mine = rec is not None and rec.lease == reservation.lease
            if (mine and rec.state == "s") or (rec is not None and rec.previous == reservation.lease):  # type: ignore[union-attr]
                return
            if mine and rec.state == "r":  # type: ignore[union-attr]
                self._release_record(rec, now)  # type: ignore[arg-type]
            for key, unit, exat in zip(reservation.keys, reservation.units, reservation.expire_at):
                if unit != "c":
                    self._spend(key, amount(unit, tokens, nano), exat, now)
            if mine or rec is None:
                done = rec if mine else _Record(0, 0, [], reservation.lease)
                done.state = "s"  # type: ignore[union-attr]
                done.drop_at = now + self.tombstone_ttl  # type: ignore[union-attr]
                self._records[rk] = done  # type: ignore[assignment]
            # the heap entry (if any) is dropped lazily by _reclaim

    async def usage(self, tenant: str, spec: TenantSpec) -> dict:
        with self._lock:
            now = self._now()
            self._reclaim(tenant, now)
            groups = self._plan.usage_groups(tenant, spec, now)
            counts = [self._count(w.key, now) for _, ws in groups for w in ws]
        return usage_doc(tenant, groups, counts, "memory")

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
