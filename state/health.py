"""One shared answer to "is the store reachable?" for budgets, breakers and the cache.

Why shared and probed in the background: with a hung store (SIGSTOP, a dead node behind a live
TCP stack) every command waits for its socket timeout. If each request discovered that on its
own, a 0.5 s timeout would be paid by every request of every subsystem. Instead:

* a connection failure (refused, reset, no master) marks the store down at once;
* a timeout is ambiguous (our own event loop may be the slow one), so it is settled by ONE
  probe (`confirm`, shared by every caller that timed out at the same moment): no answer →
  down; an answer → the store is fine and the caller treats the timeout as back-pressure;
* while down, callers skip the store without waiting (fail modes answer at once) and a
  single background task pings every `interval` seconds; on the first answer the store is up
  again and the recovery listeners run (budgets replay their journal there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from state.quiet_log import QuietLog

log = logging.getLogger("gateway.state")


class StoreHealth:
    def __init__(
        self,
        ping: Callable[[], Awaitable[Any]],
        *,
        probe_timeout: float = 0.5,
        interval: float = 1.0,
        name: str = "redis",
    ) -> None:
        self._ping = ping
        self.probe_timeout = probe_timeout
        self.interval = interval
        self.name = name
        self.down = False
        self.outages = 0
        self.down_since = 0.0
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._confirm: asyncio.Task[bool] | None = None
        self._recover: asyncio.Task[None] | None = None
        self._log = QuietLog(log, every=30.0)

    def on_recovery(self, listener: Callable[[], Awaitable[None]]) -> None:
        self._listeners.append(listener)

    async def probe(self) -> bool:
        """One ping with `probe_timeout`; never raises (except cancellation)."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                return bool(await self._ping())
        except asyncio.CancelledError:
            raise
        except Exception:
            return False

    async def check(self, tries: int = 2) -> bool:
        """Readiness: True if any of `tries` probes in a row answers; when none does the store is
        marked down (requests fail fast too). One missed probe is not an outage: a loop stalled
        for half a second, or one dropped packet, must not refuse traffic for a recovery period;
        a dead store refuses connections at once, so asking twice costs nothing there. Never
        closes an outage: only the recovery loop does, so one lucky answer cannot flap it."""
        for _ in range(max(1, tries)):
            if await self.probe():
                return True
        self.mark_down(ConnectionError(f"{tries} probes in a row: no answer"))
        return False

    async def confirm(self, cause: BaseException) -> bool:
        """After a timeout: True if the store answers a probe now (the timeout was ours), else
        marks it down and answers False. Concurrent callers share one probe."""
        if self.down:
            return False
        if self._confirm is None or self._confirm.done():
            self._confirm = asyncio.get_running_loop().create_task(self.probe())
        ok = await asyncio.shield(self._confirm)
        if not ok:
            self.mark_down(cause)
        return ok

    def mark_down(self, cause: BaseException) -> None:
        if self.down:
            return
        self.down = True
        self.outages += 1
        self.down_since = time.monotonic()
        self._log.warning("down", "%s unreachable (%s: %s); probing every %.1fs in the background",
                          self.name, type(cause).__name__, cause, self.interval)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._recover is None or self._recover.done():
            self._recover = loop.create_task(self._recover_loop())

    async def _recover_loop(self) -> None:
        while self.down:
            await asyncio.sleep(self.interval)
            if await self.probe():
                await self.mark_up()

    async def mark_up(self) -> None:
        """The store answered: leave the outage and run the recovery listeners (in order)."""
        if self.down:
            self.down = False
            log.warning("%s reachable again after %.1fs", self.name, time.monotonic() - self.down_since)
        for listener in self._listeners:
            try:
                await listener()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("listener", "%s recovery step failed: %s: %s", self.name, type(exc).__name__, exc)

    async def aclose(self) -> None:
        for task in (self._confirm, self._recover):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass


class UntrackedHealth:
    """The no-op health of a store used on its own (tests, tools): never down, never probes, so
    the store keeps its own per-call failure handling."""

    down = False
    outages = 0

    def mark_down(self, cause: BaseException) -> None:
        return None

    async def confirm(self, cause: BaseException) -> bool:
        return True

    async def probe(self) -> bool:
        return True

    async def check(self, tries: int = 2) -> bool:
        return True

    async def aclose(self) -> None:
        return None
