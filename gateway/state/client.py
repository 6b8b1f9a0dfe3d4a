"""`SharedState`: the one Redis client of a gateway process, with its gate and health.

Budgets, breakers and the cache all receive this object (not a bare client), so they share one
pool bound, one back-pressure gate and one outage detector. `owns_client` is the single name
for "closing me closes the client" across the state layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.state.gate import Gate
from gateway.state.health import StoreHealth
from gateway.state.topology import RedisConfig, connect, parse_url


@dataclass(slots=True)
class SharedState:
    redis: Any  # redis.asyncio.Redis | RedisCluster | a Sentinel master client
    prefix: str = "gw:"
    gate: Gate = field(default_factory=Gate)
    health: StoreHealth | None = None  # built from `redis.ping` when not given
    owns_client: bool = True
    kind: str = "single"  # "single" | "cluster" | "sentinel" (see topology.py)

    def __post_init__(self) -> None:
        if self.health is None:
            self.health = StoreHealth(self.redis.ping)

    @classmethod
    def connect(cls, config: RedisConfig, prefix: str = "gw:", *, probe_interval: float = 1.0) -> SharedState:
        redis = connect(config)
        return cls(
            redis=redis,
            prefix=prefix,
            gate=Gate(config.pool_size, config.pool_wait),
            health=StoreHealth(redis.ping, probe_timeout=config.timeout, interval=probe_interval),
            kind=parse_url(config.url).kind,
        )

    async def aclose(self) -> None:
        await self.health.aclose()  # type: ignore[union-attr]
        if self.owns_client:
            await self.redis.aclose()
