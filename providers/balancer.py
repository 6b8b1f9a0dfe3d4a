"""Pick one endpoint among the replicas of a self-hosted target.

Why token-aware: LLM replicas are not loaded by request count. One request with a 30k-token
prompt costs more prefill than a hundred chat turns, so each engine's own view of its work
(`GET /load`: queued prefill tokens + context tokens of running sequences) is the load signal,
plus the tokens this gateway sent since the last poll (the engine has not reported them yet).

Why prefix affinity: engines cache the KV of prompt prefixes (system prompt, tools, earlier
turns). Sending requests that share a prefix to the same replica turns their prefill into a
cache hit. Rendezvous (highest-random-weight) hashing gives each prefix a stable preference
order over the healthy endpoints, which moves only the prefixes of an endpoint that leaves or
returns. Bounded load keeps a hot prefix from melting one replica: the preferred endpoint is
skipped while its load exceeds `load_factor` × mean load + `load_slack` tokens, and the next in
the prefix's order is taken (so the spill-over is stable too).

Active health checks (a background loop, every `poll_interval`): liveness `GET /healthz`,
readiness `GET /readyz` (404 is accepted: not every server has one), load `GET /load` (optional),
and, with `deep_check`, a 1-token completion. An endpoint is ejected after `unhealthy_after`
consecutive failed checks and restored after `healthy_after` consecutive good ones; passive
signals from real requests (`mark_failure` / `mark_success`) feed the same counters. When no
endpoint is healthy, all are candidates: better to try than to refuse outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass

import aiohttp

log = logging.getLogger("gateway.balancer")

__all__ = ["Balancer", "EndpointState", "endpoint_root"]


def endpoint_root(url: str) -> str:
    """`http://h:8000/v1` → `http://h:8000` (the engine's health/load routes live at the root)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


@dataclass(slots=True)
class EndpointState:
    url: str
    healthy: bool = True
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    queued_prefill_tokens: int = 0  # from the engine's /load
    active_decode_tokens: int = 0  # from the engine's /load
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    inflight: int = 0  # requests this gateway has open on it
    sent_tokens: int = 0  # tokens this gateway sent since the last /load poll
    last_load_at: float = 0.0  # monotonic time of the last good /load answer; 0: never

    @property
    def load(self) -> int:
        return self.queued_prefill_tokens + self.active_decode_tokens + self.sent_tokens


class Balancer:
    def __init__(
        self,
        endpoints: list[str],
        session: aiohttp.ClientSession,
        *,
        poll_interval: float = 1.0,
        unhealthy_after: int = 3,
        healthy_after: int = 2,
        load_factor: float = 1.25,
        load_slack: int = 256,
        check_timeout: float = 2.0,
        deep_check: bool = False,
        deep_model: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("a balancer needs at least one endpoint")
        self.states: dict[str, EndpointState] = {url: EndpointState(url) for url in dict.fromkeys(endpoints)}
        self.session = session
        self.poll_interval = poll_interval
        self.unhealthy_after = unhealthy_after
        self.healthy_after = healthy_after
        self.load_factor = load_factor
        self.load_slack = load_slack
        self.check_timeout = check_timeout
        self.deep_check = deep_check
        self.deep_model = deep_model
        self._salt = {url: url + "\x00" for url in self.states}
        self._tiebreak = 0
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    # -- choosing ------------------------------------------------------------------------------

    def _pool(self) -> list[EndpointState]:
        healthy = [s for s in self.states.values() if s.healthy]
        return healthy or list(self.states.values())

    def _least_loaded(self, pool: list[EndpointState]) -> EndpointState:
        # Ties (e.g. everything idle) rotate, so a burst before the next poll is spread out.
        self._tiebreak += 1
        n = len(pool)
        return min(
            (pool[(i + self._tiebreak) % n] for i in range(n)),
            key=lambda s: (s.load, s.inflight),
        )

    def preference(self, prefix_key: str, pool: list[EndpointState] | None = None) -> list[EndpointState]:
        """Rendezvous order of `pool` (default: the healthy endpoints) for one prefix."""
        pool = self._pool() if pool is None else pool
        return sorted(pool, key=lambda s: _hash64(self._salt[s.url] + prefix_key), reverse=True)

    def choose(self, prefix_key: str | None, est_tokens: int) -> str:
        """Cheap and synchronous: uses only state already polled. Does not count the request;
        call `started` once it is sent."""
        pool = self._pool()
        if len(pool) == 1:
            return pool[0].url
        if prefix_key is None:
            return self._least_loaded(pool).url
        # Bounded load: an endpoint may take the request if its load with it stays within
        # load_factor x the mean load (this request included) + slack; an idle one always may.
        mean = (sum(s.load for s in pool) + est_tokens) / len(pool)
        bound = self.load_factor * mean + self.load_slack
        for s in self.preference(prefix_key, pool):
            if s.load == 0 or s.load + est_tokens <= bound:
                return s.url
        return self._least_loaded(pool).url

    # -- local accounting and passive signals --------------------------------------------------

    def started(self, url: str, tokens: int) -> None:
        s = self.states[url]
        s.inflight += 1
        s.sent_tokens += max(0, tokens)

    def finished(self, url: str, tokens: int) -> None:
        """Tokens not yet folded into a /load poll are taken back; polled ones the next poll drops."""
        s = self.states[url]
        s.inflight = max(0, s.inflight - 1)
        s.sent_tokens = max(0, s.sent_tokens - max(0, tokens))

    def mark_failure(self, url: str) -> None:
        s = self.states[url]
        s.consecutive_failures += 1
        s.consecutive_successes = 0
        if s.healthy and s.consecutive_failures >= self.unhealthy_after:
            s.healthy = False
            log.warning("endpoint %s ejected after %d failures", url, s.consecutive_failures)

    def mark_success(self, url: str) -> None:
        s = self.states[url]
        s.consecutive_successes += 1
        s.consecutive_failures = 0
        if not s.healthy and s.consecutive_successes >= self.healthy_after:
            s.healthy = True
            log.info("endpoint %s restored after %d good checks", url, s.consecutive_successes)

    def snapshot(self) -> list[dict]:
        return [
            {
                "url": s.url, "healthy": s.healthy, "load": s.load, "inflight": s.inflight,
                "queued_prefill_tokens": s.queued_prefill_tokens, "active_decode_tokens": s.active_decode_tokens,
                "waiting": s.waiting, "running": s.running, "kv_usage": s.kv_usage,
                "consecutive_failures": s.consecutive_failures,
            }
            for s in self.states.values()
        ]

    # -- active health checks ------------------------------------------------------------------

    async def _get(self, url: str) -> tuple[int, object | None]:
        timeout = aiohttp.ClientTimeout(total=self.check_timeout)
        async with self.session.get(url, timeout=timeout) as resp:
            if resp.status == 200 and resp.content_type == "application/json":
                return resp.status, await resp.json()
            await resp.read()
            return resp.status, None

    async def _deep(self, s: EndpointState) -> bool:
        body = {
            "model": self.deep_model or "default",
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        }
        timeout = aiohttp.ClientTimeout(total=self.check_timeout)
        async with self.session.post(s.url.rstrip("/") + "/chat/completions", json=body, timeout=timeout) as resp:
            await resp.read()
            return resp.status == 200

    async def check(self, s: EndpointState) -> bool:
        """One round of checks on one endpoint; updates its load and health counters."""
        root = endpoint_root(s.url)
        try:
            status, _ = await self._get(root + "/healthz")
            ok = status == 200
            if ok:
                status, _ = await self._get(root + "/readyz")
                ok = status in (200, 404)
            if ok:
                status, load = await self._get(root + "/load")
                if status == 200 and isinstance(load, dict):
                    self._apply_load(s, load)
            if ok and self.deep_check:
                ok = await self._deep(s)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            log.debug("health check of %s failed: %r", s.url, exc)
            ok = False
        (self.mark_success if ok else self.mark_failure)(s.url)
        return ok

    @staticmethod
    def _apply_load(s: EndpointState, load: dict) -> None:
        try:
            s.queued_prefill_tokens = int(load.get("queued_prefill_tokens", 0))
            s.active_decode_tokens = int(load.get("active_decode_tokens", 0))
            s.waiting = int(load.get("waiting", 0))
            s.running = int(load.get("running", 0))
            s.kv_usage = float(load.get("kv_usage", 0.0))
        except (TypeError, ValueError):
            return
        s.sent_tokens = 0  # the engine's figures now include what we sent
        s.last_load_at = time.monotonic()

    async def poll_once(self) -> dict[str, bool]:
        states = list(self.states.values())
        results = await asyncio.gather(*(self.check(s) for s in states))
        return {s.url: ok for s, ok in zip(states, results)}

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.poll_once()
            except Exception:  # never let one bad round end the loop
                log.exception("balancer poll failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll_interval)

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.create_task(self._loop(), name="balancer-health")

    async def stop(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, self.check_timeout + 1.0)
            except asyncio.TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
