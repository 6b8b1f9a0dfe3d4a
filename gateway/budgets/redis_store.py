"""Budgets in Redis (single node, Cluster or Sentinel): reserve, settle, usage and lease renewal
are one EVALSHA each (`state/lua/budgets.lua`).

Leases: a reservation lives for `lease` seconds (30 by default) and this replica renews the
leases of its in-flight reservations every `lease / 3` seconds. A replica that dies stops
renewing, so its reservations are reclaimed by the next reserve/usage of the tenant one lease
later: a crash blocks budget for seconds, not minutes. The same loop publishes a heartbeat in
`<prefix>replicas`, from which every replica learns how many replicas share the budgets (the
fail-open share, see `failover.py`).

Records of finished requests are kept `tombstone_ttl` seconds (5 minutes by default): as long
as a replayed settle can arrive, so a replay never counts twice. See docs/operations.md for
Redis sizing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.budgets.api import BudgetsBusy, BudgetsUnavailable, Reservation
from gateway.budgets.counts import Count, pairs
from gateway.budgets.render import exceeded, reservation, usage_doc
from gateway.budgets.windows import Planner, check_request, usd_to_nano
from state import (
    Failure,
    Gate,
    QuietLog,
    StoreBusy,
    StoreHealth,
    classify,
    register,
    run_confirmed,
)
from policies.schema import TenantSpec

log = logging.getLogger("gateway.budgets")

_QUOTA_UNITS = frozenset("tu")


class RedisBudgets:
    def __init__(
        self,
        redis: Any,
        prefix: str = "gw:",
        lease: float = 30.0,
        *,
        tombstone_ttl: float = 300.0,
        reclaim_batch: int = 64,
        now: Callable[[], float] = time.time,
        gate: Gate | None = None,
        health: StoreHealth | None = None,
        owns_client: bool = True,
        confirm_replicas: int = 0,
        confirm_timeout: float = 0.2,
    ) -> None:
        if lease <= 0 or tombstone_ttl <= 0:
            raise ValueError("lease and tombstone_ttl must be positive")
        self.redis = redis
        self.prefix = prefix
        self.lease = lease
        self.reservation_ttl = lease  # the name MemoryBudgets uses for the same idea
        self.tombstone_ttl = tombstone_ttl
        self.reclaim_batch = reclaim_batch
        self.now = now
        self.gate = gate or Gate()
        self.health = health or StoreHealth(redis.ping)
        self.owns_client = owns_client
        self.confirm_replicas = confirm_replicas
        self.confirm_timeout = confirm_timeout
        self.replica_id = uuid.uuid4().hex[:12]
        self.replicas = 1  # live replicas sharing these budgets (learned from heartbeats)
        self.renewals = 0
        self.plan = Planner(prefix)
        self._script = register(redis, "budgets")
        # tenant -> {request id: lease nonce} of reservations in flight on this replica
        self._live: dict[str, dict[str, str]] = {}
        # (tenant, window name, model) -> last count the store reported: the fail-open share
        self.seen: dict[tuple[str, str, str | None], Count] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._unsure: deque[tuple[str, str, str]] = deque(maxlen=100_000)
        self._stopping = asyncio.Event()
        self._log = QuietLog(log)

    # -- plumbing
    def _head(self, op: str, tenant: str, now: float) -> list[Any]:
        return [op, int(now * 1000), self.plan.record_prefix(tenant), self.reclaim_batch, max(1, int(self.tombstone_ttl))]

    async def _run(self, keys: list[str], args: list[Any], wait: int = 0) -> Any:
        if self.health.down:
            raise BudgetsUnavailable("budget store unreachable (probing in the background)")
        try:
            async with self.gate.slot():
                if wait:  # how many replicas have the write (Sentinel, Cluster with replicas)
                    return await run_confirmed(self.redis, self._script, keys, args, wait, self.confirm_timeout)
                return await self._script(keys=keys, args=args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind = classify(exc)
            if kind is Failure.OTHER:
                raise
            if kind is Failure.BUSY:
                raise BudgetsBusy(f"budget store busy on this replica: {exc}") from exc
            if kind is Failure.TIMEOUT and await self.health.confirm(exc):
                raise BudgetsBusy(f"budget store answered late under load: {exc}") from exc
            self.health.mark_down(exc)
            raise BudgetsUnavailable(f"budget store unreachable: {type(exc).__name__}: {exc}") from exc

    def _remember(self, tenant: str, windows: list, counts: list[Count]) -> None:
        for w, c in zip(windows, counts):
            if w.unit in _QUOTA_UNITS and w.resets_at is not None and w.name != "tokens_per_minute":
                self.seen[(tenant, w.name, w.model)] = c

    def _start_renewer(self) -> None:
        if (self._renewer is None or self._renewer.done()) and not self._stopping.is_set():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    # -- API
    async def reserve(
        self, *, tenant: str, spec: TenantSpec, model: str, request_id: str, tokens: int, usd: float
    ) -> Reservation:
        check_request(request_id, tokens)
        nano = usd_to_nano(usd)
        now = self.now()
        windows = self.plan.plan(tenant, spec, model, now)
        expires_at = now + self.lease
        nonce = uuid.uuid4().hex[:12]
        keys = [self.plan.active_key(tenant), self.plan.record_prefix(tenant) + request_id]
        args = self._head("R", tenant, now)
        args += [int(expires_at * 1000), tokens, nano, request_id, "".join(w.unit for w in windows), nonce]
        for w in windows:
            keys.append(w.key)
            args += (w.limit, w.expire_at)
        self._start_renewer()
        try:
            out = await self._run(keys, args)
        except BudgetsUnavailable as exc:
            if exc.__cause__ is not None and not isinstance(exc.__cause__, StoreBusy):
                # sent, but no reply: it may have run, so release it when the store answers
                self._unsure.append((tenant, request_id, nonce))
            raise
        status, counts = int(out[0]), pairs(out[1:])
        if status == -1:
            raise ValueError(f"request id {request_id!r} is already in flight")
        if counts:
            self._remember(tenant, windows, counts)
        if status == 0:
            raise exceeded(tenant, windows, counts, tokens, nano, now)
        self._live.setdefault(tenant, {})[request_id] = nonce
        return reservation(request_id, tenant, model, tokens, usd, windows, counts, now, expires_at, "redis", nonce)

    def twin(self, tenant: str, spec: TenantSpec, model: str, request_id: str, lease: str, now: float) -> Reservation:
        """A reservation naming this store's keys, never written: how spend admitted elsewhere
        (the local fallback) is replayed here later (settle of an unknown lease = spend)."""
        windows = self.plan.plan(tenant, spec, model, now)
        return reservation(f"{request_id}.{lease}", tenant, model, 0, 0.0, windows, [Count()] * len(windows),
                           now, now, "redis", lease)

    async def settle(self, reservation: Reservation, *, tokens: int, usd: float, confirm: bool = True) -> bool:
        """Record the actual usage. With `confirm_replicas` (Sentinel, or a Cluster with replicas:
        asynchronous replicas that a fail-over promotes), the settle is followed by WAIT on the same
        connection; False means no replica acknowledged it within `confirm_timeout` (the caller
        holds it for a replay)."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        nano = usd_to_nano(usd)
        t, rid = reservation.tenant, reservation.request_id
        live = self._live.get(t)
        if live is not None and live.get(rid) == reservation.lease:
            del live[rid]
            if not live:
                del self._live[t]
        keys = [self.plan.active_key(t), self.plan.record_prefix(t) + rid, *reservation.keys]
        args = self._head("S", t, self.now()) + [tokens, nano, rid, reservation.lease, reservation.units]
        args += list(reservation.expire_at)
        if not (confirm and self.confirm_replicas):
            await self._run(keys, args)
            return True
        return await self._run(keys, args, wait=self.confirm_replicas) >= self.confirm_replicas

    async def usage(self, tenant: str, spec: TenantSpec) -> dict:
        now = self.now()
        groups = self.plan.usage_groups(tenant, spec, now)
        windows = [w for _, ws in groups for w in ws]
        counts = pairs(await self._run([self.plan.active_key(tenant)] + [w.key for w in windows],
                                       self._head("U", tenant, now)))
        self._remember(tenant, windows, counts)
        return usage_doc(tenant, groups, counts, "redis")

    # -- leases and heartbeats
    async def renew(self) -> int:
        """Extend the lease of every reservation in flight here; publish the heartbeat."""
        if self.health.down:
            return 0
        now = self.now()
        while self._unsure:  # reserves whose reply was lost: give their budget back now
            tenant, rid, nonce = self._unsure[0]
            await self._script(keys=[self.plan.active_key(tenant), self.plan.record_prefix(tenant) + rid],
                               args=[*self._head("X", tenant, now), rid, nonce])
            self._unsure.popleft()
        expiry = int((now + self.lease) * 1000)
        renewed = 0
        for tenant, ids in list(self._live.items()):
            if ids:
                renewed += int(await self._script(keys=[self.plan.active_key(tenant)],
                                                  args=[*self._head("L", tenant, now), expiry, *ids]))
        key = f"{self.prefix}replicas"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.replica_id: now})
            pipe.zremrangebyscore(key, "-inf", now - self.lease)
            pipe.zcard(key)
            pipe.expire(key, int(self.lease * 4))
            replies = await pipe.execute()
        self.replicas = max(1, int(replies[2]))
        self.renewals += renewed
        return renewed

    async def _renew_loop(self) -> None:
        # Stopped by an event as well as by cancel: redis-py may swallow a cancel mid-command.
        while not self._stopping.is_set():
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("renew", "budget lease renewal failed: %s: %s", type(exc).__name__, exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.lease / 3)
            except TimeoutError:
                pass

    async def ping(self) -> bool:
        return await self.health.probe()

    async def aclose(self) -> None:
        self._stopping.set()
        if self._renewer is not None and not self._renewer.done():
            self._renewer.cancel()
            await asyncio.wait({self._renewer}, timeout=2.0)
        if self.owns_client:
            await self.health.aclose()
            await self.redis.aclose()
