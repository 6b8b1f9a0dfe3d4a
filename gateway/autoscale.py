"""Autoscaling advice for self-hosted targets: how many engine replicas the load needs.

Why queue and token signals: an LLM replica saturates on KV cache and batch slots long before its
CPU or GPU utilisation says so, and a queue that grows is the first sign of it. Each replica's own
view (`GET /load`: waiting requests, queued prefill tokens, active decode tokens, KV usage) is
summed over the fleet and divided by the per-replica capacity targets of the policy
(`AutoscaleSpec`); the tightest signal decides: need = max_s ceil(Σ_s / target_s). `warm_pool`
idle replicas are added, and the result is kept within [min_replicas, max_replicas].

Why two windows: GPU replicas take minutes to start and are expensive to keep, so the advice must
not chase every burst nor drop capacity in a lull. Like the Kubernetes HPA's stabilisation
windows, the advice rises only to the lowest recommendation that has held for the whole
scale-up window (default 60 s), and falls only to the highest recommendation of the whole
scale-down window (default 300 s). A recommendation oscillating between a and b therefore
leaves the advice inside [a, b]: it cannot flap.

`Advisor` is the pure core: it takes the time and the load samples as arguments, so a simulated
trace drives it deterministically. `AutoscaleSampler` is the runtime wrapper: a background task
(off the request path) that reads the balancer's polled load, or polls `/load` itself for a
single-endpoint target, feeds the advisors and publishes the gauges.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import aiohttp

from policies.schema import AutoscaleSpec

log = logging.getLogger("gateway.autoscale")

__all__ = ["Advice", "Advisor", "AutoscaleSampler", "ReplicaLoad", "SIGNALS", "recommend"]


def load_url(endpoint: str) -> str:
    """`http://h:8000/v1` → `http://h:8000/load`: an engine's load route lives at its root."""
    root = endpoint.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/load"


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One replica's `/load` answer (the fields the advisor uses)."""

    waiting: float = 0.0
    queued_prefill_tokens: float = 0.0
    active_decode_tokens: float = 0.0
    kv_usage: float = 0.0

    @classmethod
    def from_json(cls, load: Mapping) -> "ReplicaLoad":
        return cls(**{name: float(load.get(name) or 0) for name in cls.__slots__})


# signal name (as exported) -> (ReplicaLoad field, AutoscaleSpec per-replica target), in tie order.
SIGNALS: dict[str, tuple[str, str]] = {
    "waiting_requests": ("waiting", "waiting_requests"),
    "queued_prefill_tokens": ("queued_prefill_tokens", "queued_prefill_tokens"),
    "active_decode_tokens": ("active_decode_tokens", "active_decode_tokens"),
    "kv_usage": ("kv_usage", "kv_usage"),
}
# Other values of the limiting signal: a bound decided, the fleet is idle, or nothing answered.
BOUND_SIGNALS = ("min_replicas", "max_replicas", "idle", "no_data")


def recommend(spec: AutoscaleSpec, loads: Sequence[ReplicaLoad]) -> tuple[int, str]:
    """(replicas, limiting signal) for one sample of the fleet, before any stabilisation."""
    need, limiting = 0, "idle"
    for signal, (field, target_attr) in SIGNALS.items():
        per_replica = getattr(spec, target_attr)
        if per_replica is None:
            continue
        total = sum(getattr(load, field) for load in loads)
        # The small slack keeps float sums like 0.85 + 0.85 from asking for a third replica.
        replicas = math.ceil(total / per_replica - 1e-9) if total > 0 else 0
        if replicas > need:
            need, limiting = replicas, signal
    wanted = need + spec.warm_pool
    if wanted > spec.max_replicas:
        return spec.max_replicas, "max_replicas"
    if wanted < spec.min_replicas:
        return spec.min_replicas, "min_replicas"
    return wanted, limiting


@dataclass(frozen=True, slots=True)
class Advice:
    target: str
    desired: int  # the stabilised advice: what the autoscaler should run
    recommended: int  # the last sample's raw recommendation
    signal: str  # what limits the last raw recommendation (see SIGNALS and BOUND_SIGNALS)
    replicas: int  # replicas that reported load in the last sample
    at: float  # time of the last sample (the caller's clock)
    changed_at: float  # when `desired` last changed

    def as_json(self) -> dict:
        return asdict(self)


class Advisor:
    """The stabilised advice for one target. Pure: time and load come in as arguments."""

    def __init__(self, target: str, spec: AutoscaleSpec) -> None:
        self.target = target
        self.spec = spec
        self._history: deque[tuple[float, int]] = deque()  # (time, raw recommendation), ascending time
        self._advice: Advice | None = None
        self._seeded = False

    @property
    def advice(self) -> Advice | None:
        return self._advice

    def observe(self, now: float, loads: Sequence[ReplicaLoad]) -> Advice:
        """Feed one sample taken at `now` (monotonic seconds, never decreasing)."""
        if self._history and now < self._history[-1][0]:
            raise ValueError(f"time went backwards: {now} < {self._history[-1][0]}")
        if not loads:  # nothing answered: hold the advice, never scale on missing data
            previous = self._advice
            desired = previous.desired if previous else self.spec.min_replicas
            self._advice = Advice(self.target, desired, desired, "no_data", 0, now,
                                  previous.changed_at if previous else now)
            return self._advice
        raw, signal = recommend(self.spec, loads)
        self._history.append((now, raw))
        self._prune(now)
        previous = self._advice
        if not self._seeded:  # the first sample: start from what the load says, not from the minimum
            desired, self._seeded = raw, True
        else:
            desired = previous.desired
            floor = self._extreme(now, self.spec.scale_up_seconds, min)
            ceiling = self._extreme(now, self.spec.scale_down_seconds, max)
            if floor is not None and floor > desired:
                desired = floor
            elif ceiling is not None and ceiling < desired:
                desired = ceiling
        changed_at = now if previous is None or desired != previous.desired else previous.changed_at
        self._advice = Advice(self.target, desired, raw, signal, len(loads), now, changed_at)
        return self._advice

    def _covers(self, now: float, window: float) -> bool:
        return bool(self._history) and self._history[0][0] <= now - window

    def _extreme(self, now: float, window: float, pick: Callable[[list[int]], int]) -> int | None:
        """min or max of the recommendations in force during [now - window, now]; None until the
        history reaches back that far (a window is only trusted once it was fully observed)."""
        if not self._covers(now, window):
            return None
        start = now - window
        values = []
        for t, raw in reversed(self._history):
            values.append(raw)
            if t <= start:  # the sample in force at the window's start
                break
        return pick(values)

    def _prune(self, now: float) -> None:
        # Keep the last sample at or before the longest window's start: it is still in force there.
        start = now - max(self.spec.scale_up_seconds, self.spec.scale_down_seconds)
        while len(self._history) > 1 and self._history[1][0] <= start:
            self._history.popleft()


class AutoscaleSampler:
    """Samples the load of every self-hosted target with an `autoscale` block, periodically and
    off the request path, and publishes the advice (`snapshot()`, telemetry gauges).

    `providers` is called on every round, so policy reloads (new targets, changed specs) are
    picked up; an advisor whose spec changed starts afresh.
    """

    def __init__(self, providers: Callable[[], Mapping[str, object]], session: aiohttp.ClientSession,
                 publish: Callable[[Advice], None] = lambda advice: None, *, clock: Callable[[], float] = time.monotonic,
                 timeout: float = 2.0) -> None:
        self._providers = providers
        self._session = session
        self._publish = publish
        self._clock = clock
        self._timeout = timeout
        self._advisors: dict[str, Advisor] = {}
        self._due: dict[str, float] = {}

    def snapshot(self) -> dict[str, dict]:
        """The advice per target, with ages in seconds (`at` and `changed_at` are monotonic times)."""
        now = self._clock()
        return {name: {**a.advice.as_json(), "sampled_seconds_ago": round(now - a.advice.at, 3),
                       "unchanged_for_seconds": round(now - a.advice.changed_at, 3)}
                for name, a in sorted(self._advisors.items()) if a.advice is not None}

    def _targets(self) -> dict[str, object]:
        return {name: p for name, p in self._providers().items()
                if getattr(getattr(p, "spec", None), "autoscale", None) is not None and hasattr(p, "endpoints")}

    async def _loads(self, provider) -> list[ReplicaLoad]:
        balancer = getattr(provider, "balancer", None)
        if balancer is not None:  # the balancer already polls every replica's /load
            fresh_after = self._clock() - 3 * balancer.poll_interval - self._timeout
            return [ReplicaLoad(s.waiting, s.queued_prefill_tokens, s.active_decode_tokens, s.kv_usage)
                    for s in balancer.states.values()
                    if s.healthy and s.last_load_at > 0 and s.last_load_at >= fresh_after]
        answers = await asyncio.gather(*(self._poll(url) for url in provider.endpoints))
        return [load for load in answers if load is not None]

    async def _poll(self, url: str) -> ReplicaLoad | None:
        try:
            async with self._session.get(load_url(url),
                                         timeout=aiohttp.ClientTimeout(total=self._timeout)) as resp:
                if resp.status != 200:
                    await resp.read()
                    return None
                body = await resp.json(content_type=None)
            return ReplicaLoad.from_json(body) if isinstance(body, dict) else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, TypeError) as exc:
            log.debug("load poll of %s failed: %r", url, exc)
            return None

    async def sample_once(self) -> dict[str, Advice]:
        """One round: every target whose sampling is due. Returns the advice it produced."""
        targets = self._targets()
        for gone in set(self._advisors) - set(targets):
            del self._advisors[gone]
            self._due.pop(gone, None)
        now = self._clock()
        due = {name: p for name, p in targets.items() if self._due.get(name, 0.0) <= now}
        loads = await asyncio.gather(*(self._loads(p) for p in due.values()))
        produced: dict[str, Advice] = {}
        now = self._clock()
        for (name, provider), sample in zip(due.items(), loads):
            spec = provider.spec.autoscale
            advisor = self._advisors.get(name)
            if advisor is None or advisor.spec != spec:
                advisor = self._advisors[name] = Advisor(name, spec)
            produced[name] = advice = advisor.observe(now, sample)
            self._due[name] = now + spec.sample_seconds
            self._publish(advice)
        return produced

    def next_delay(self) -> float:
        """Seconds until the next target is due (at least 0.1 s, at most 5 s so new targets are seen)."""
        if not self._due:
            return 1.0
        return min(5.0, max(0.1, min(self._due.values()) - self._clock()))

    async def run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception:  # never let one bad round end the loop
                log.exception("autoscale sampling failed")
            await asyncio.sleep(self.next_delay())
