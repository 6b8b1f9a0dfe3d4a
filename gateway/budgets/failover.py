"""Redis first; what happens while it cannot be reached is the fail mode.

* closed (default): `BudgetsUnavailable` → HTTP 503 + Retry-After. Nothing is admitted that the
  shared books did not see.
* open: each replica admits against a conservative LOCAL SHARE of the tenant's budget
  (`share.py`: what remained at the last good read, divided by the number of live replicas)
  in a `MemoryBudgets`, and journals every settled spend. When the store answers again the
  journal is replayed into it, so the books end equal to the sum of delivered usage. Overspend
  is bounded by the staleness of that last read, counted (`overspend`) and logged once.

Back-pressure (`BudgetsBusy`: this replica's own pool is exhausted, or the store answered late
but answers a probe) never flips the mode; the excess caller gets 503 + Retry-After.

A settle never raises for unavailability (the reply is already gone): it is queued and
replayed. Where a master has replicas (Sentinel, a Cluster with replicas: asynchronous replication)
a settle no replica acknowledged within a short WAIT is held for `hold_seconds` and replayed after
the next outage, so a fail-over that promotes a replica without it does not lose it. ONE replayer at a time pops an entry before settling it and puts it back at the head
on failure, so concurrent recoveries can neither replay a settle twice nor drop one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.budgets.api import BudgetsBusy, BudgetsUnavailable, Reservation
from gateway.budgets.memory import MemoryBudgets
from gateway.budgets.redis_store import RedisBudgets
from gateway.budgets.share import local_share
from state import QuietLog
from policies.schema import TenantSpec

log = logging.getLogger("gateway.budgets")


@dataclass(slots=True)
class _Pending:
    reservation: Reservation  # names the store's keys
    tokens: int
    usd: float


class FailoverBudgets:
    def __init__(
        self,
        redis: RedisBudgets,
        memory: MemoryBudgets | None = None,
        *,
        mode: Literal["closed", "open"] = "closed",
        max_pending_settles: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in ("closed", "open"):
            raise ValueError(f"mode must be 'closed' or 'open', got {mode!r}")
        self.primary = redis
        self.health = redis.health
        self.memory = memory or MemoryBudgets(now=redis.now)
        self.mode = mode
        self.max_pending_settles = max_pending_settles
        self.fallback_events = 0  # reserves served by the local share
        self.journaled = 0  # settles replayed (or waiting) into the store
        self.dropped = 0  # settles lost because the journal was full (logged)
        self.overspend: dict[str, float] = {}  # window name -> amount over its limit after replays
        self._clock = monotonic
        self._pending: deque[_Pending] = deque()
        self._twins: dict[tuple[str, str, str], tuple[Reservation, TenantSpec]] = {}
        self._touched: dict[str, TenantSpec] = {}  # tenants with journaled spend (overspend check)
        # settles no replica acknowledged (Sentinel): (when, settle), replayed after an outage
        self.hold_seconds = 30.0
        self._outages_seen = self.health.outages
        self._held: deque[tuple[float, _Pending]] = deque(maxlen=max_pending_settles)
        self._replay_lock = asyncio.Lock()
        self._replayer: asyncio.Task[None] | None = None
        self._log = QuietLog(log)
        self.health.on_recovery(self._recover)

    @property
    def degraded(self) -> bool:
        return self.health.down

    @property
    def outages(self) -> int:
        return self.health.outages

    @property
    def pending_settles(self) -> int:
        return len(self._pending)

    # -- journal
    def _queue(self, item: _Pending) -> None:
        if len(self._pending) >= self.max_pending_settles:
            self.dropped += 1
            self._log.warning("journal-full", "budget journal full (%d settles): spend of %s dropped",
                              self.max_pending_settles, item.reservation.tenant)
            return
        self._pending.append(item)

    async def _replay(self) -> None:
        """Drain the journal into the store; one replayer at a time (the lock)."""
        async with self._replay_lock:
            while self._pending and not self.health.down:
                item = self._pending.popleft()
                try:
                    await self.primary.settle(item.reservation, tokens=item.tokens, usd=item.usd, confirm=False)
                except BudgetsUnavailable:  # down or busy: back at the head, try again later
                    self._pending.appendleft(item)
                    return
                except Exception as exc:  # a bug must not wedge the journal: drop, loudly
                    self.dropped += 1
                    self._log.warning("replay", "budget replay failed: %s: %s", type(exc).__name__, exc)

    async def _replay_until_empty(self) -> None:
        """Retry with back-off while the store is up but refuses (busy): a journal must not wait
        for the next request to be drained. While it is down, the recovery listener takes over."""
        delay = 0.05
        while self._pending and not self.health.down:
            await self._replay()
            if self._pending and not self.health.down:
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    def _replay_soon(self) -> None:
        if self._pending and (self._replayer is None or self._replayer.done()):
            self._replayer = asyncio.get_running_loop().create_task(self._replay_until_empty())

    async def _recover(self) -> None:
        """The store is back: renew our leases, replay the journal, then report the overspend.
        Settles no replica had acknowledged are replayed first: after a fail-over the promoted
        replica may lack them (a replay the store already has is a no-op)."""
        if self.health.outages != self._outages_seen:  # only after a real outage (a fail-over)
            self._outages_seen = self.health.outages
            while self._held:
                self._pending.appendleft(self._held.pop()[1])
        await self.primary.renew()
        had = len(self._pending)
        await self._replay()
        if self._touched and not self._pending:
            touched, self._touched = self._touched, {}
            self.memory = MemoryBudgets(now=self.primary.now)  # next outage starts from fresh shares
            over: dict[str, float] = {}
            for tenant, spec in touched.items():
                doc = await self.primary.usage(tenant, spec)
                for name, w in doc["windows"].items():
                    if w["limit"] is not None and w["spent"] > w["limit"]:
                        over[name] = over.get(name, 0) + w["spent"] - w["limit"]
            for name, amount in over.items():
                self.overspend[name] = self.overspend.get(name, 0) + amount
            log.warning("budget journal replayed: %d settles from the outage; %d tenant(s) checked, over limit: %s",
                        had, len(touched), over or "none")

    # -- API
    async def reserve(
        self, *, tenant: str, spec: TenantSpec, model: str, request_id: str, tokens: int, usd: float
    ) -> Reservation:
        if not self.health.down:
            try:
                res = await self.primary.reserve(tenant=tenant, spec=spec, model=model, request_id=request_id,
                                                 tokens=tokens, usd=usd)
            except BudgetsBusy:
                raise
            except BudgetsUnavailable:
                if self.mode == "closed":
                    raise
            else:
                self._replay_soon()
                return res
        if self.mode == "closed":
            raise BudgetsUnavailable("budget store unreachable (probing in the background)")
        self.fallback_events += 1
        share = local_share(tenant, spec, self.primary.seen, self.primary.replicas)
        res = await self.memory.reserve(tenant=tenant, spec=share, model=model, request_id=request_id,
                                        tokens=tokens, usd=usd)
        twin = self.primary.twin(tenant, spec, model, request_id, res.lease, self.primary.now())
        self._twins[(tenant, request_id, res.lease)] = (twin, spec)
        return res

    async def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None:
        if reservation.backend == "memory":
            await self.memory.settle(reservation, tokens=tokens, usd=usd)
            twin = self._twins.pop((reservation.tenant, reservation.request_id, reservation.lease), None)
            if twin is not None:
                self.journaled += 1
                self._touched[reservation.tenant] = twin[1]
                self._queue(_Pending(twin[0], tokens, usd))
                if not self.health.down:
                    self._replay_soon()
            return
        if self.health.down:
            self._queue(_Pending(reservation, tokens, usd))
            return
        try:
            replicated = await self.primary.settle(reservation, tokens=tokens, usd=usd)
        except BudgetsUnavailable:
            self._queue(_Pending(reservation, tokens, usd))
            if not self.health.down:  # busy: retry shortly
                self._replay_soon()
            return
        now = self._clock()
        while self._held and self._held[0][0] < now - self.hold_seconds:
            self._held.popleft()  # replicated by now, or no replica exists to lose it to
        if replicated is False:
            self._held.append((now, _Pending(reservation, tokens, usd)))

    async def usage(self, tenant: str, spec: TenantSpec) -> dict:
        if not self.health.down:
            try:
                return await self.primary.usage(tenant, spec)
            except BudgetsBusy:
                raise
            except BudgetsUnavailable:
                if self.mode == "closed":
                    raise
        if self.mode == "closed":
            raise BudgetsUnavailable("budget store unreachable (probing in the background)")
        doc = await self.memory.usage(tenant, local_share(tenant, spec, self.primary.seen, self.primary.replicas))
        doc["degraded"] = True
        return doc

    async def ping(self) -> bool:
        """Store reachable (leaves the outage, replays the journal). In mode "open" the gateway
        serves without it, so this is True either way; read `degraded` for the detail."""
        ok = await self.primary.ping()
        if ok:
            await self.health.mark_up()
        else:
            self.health.mark_down(BudgetsUnavailable("ping failed"))
        return ok or self.mode == "open"

    async def drain(self) -> None:
        """Replay what can be replayed now (shutdown, tests)."""
        if not self.health.down:
            await self._replay()

    async def aclose(self) -> None:
        await self.drain()
        if self._replayer is not None and not self._replayer.done():
            self._replayer.cancel()
        await self.primary.aclose()
        await self.memory.aclose()
