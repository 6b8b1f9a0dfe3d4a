"""`SharedState`: the one Redis client of a gateway process, with its gate and health.

Budgets, breakers and the cache all receive this object (not a bare client), so they share one
pool bound, one back-pressure gate and one outage detector. `owns_client` is the single name
for "closing me closes the client" across the state layer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec

from state.gate import Gate
from state.health import StoreHealth
from state.topology import RedisConfig, connect, parse_url, replicas_to_confirm, whole_store_ping


@dataclass(slots=True)
class SharedState:
    redis: Any  # redis.asyncio.Redis | RedisCluster | a Sentinel master client
    prefix: str = "gw:"
    gate: Gate = field(default_factory=Gate)
    health: StoreHealth | None = None  # built from `redis.ping` when not given
    owns_client: bool = True
    kind: str = "single"  # "single" | "cluster" | "sentinel" (see topology.py)

    probe_client: Any = None  # the probe's own connection: a full pool must not look like an outage
    # Replicas a write that must survive a fail-over waits for (settles; see topology.py); set
    # by `start` from what the store reports.
    confirm_replicas: int = 0

    def __post_init__(self) -> None:
        if self.health is None:
            self.health = StoreHealth(self.redis.ping)

    @classmethod
    def connect(cls, config: RedisConfig, prefix: str = "gw:", *, probe_interval: float = 1.0) -> SharedState:
        redis = connect(config)
        probe = connect(msgspec.structs.replace(config, pool_size=1, pool_wait=config.timeout))
        kind = parse_url(config.url).kind
        return cls(
            redis=redis,
            prefix=prefix,
            gate=Gate(config.pool_size, config.pool_wait),
            health=StoreHealth(whole_store_ping(probe, kind), probe_timeout=config.timeout, interval=probe_interval),
            kind=kind,
            probe_client=probe,
        )

    async def start(self) -> bool:
        """Discover the topology (cluster slots, the sentinel's master, whether a master has
        replicas: `confirm_replicas`) before traffic: a RedisCluster initialised by many concurrent
        first commands drops some of them. Bounded by the command timeout; False if the store does
        not answer (the fail mode then applies)."""
        try:
            async with asyncio.timeout(max(1.0, 4 * self.health.probe_timeout)):  # type: ignore[union-attr]
                reached = bool(await self.redis.ping())
                self.confirm_replicas = await replicas_to_confirm(self.redis, self.kind)
        except asyncio.CancelledError:
            raise
        except Exception:
            reached = False
            self.confirm_replicas = 1 if self.kind != "single" else 0  # unknown: assume a fail-over can happen
        return reached

    async def aclose(self) -> None:
        await self.health.aclose()  # type: ignore[union-attr]
        if self.owns_client:
            await self.redis.aclose()
            if self.probe_client is not None:
                await self.probe_client.aclose()
