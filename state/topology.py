"""Which Redis the gateway talks to, from one URL, with the right redis-py client class.

==================================================  ==========================================
URL                                                 client
==================================================  ==========================================
``redis://h:p/0``, ``rediss://h:p/0`` (TLS),        ``redis.asyncio.Redis`` on a bounded,
``unix:///path.sock``                               blocking connection pool
``redis+cluster://h:p,h:p`` (``rediss+cluster``)    ``redis.asyncio.RedisCluster`` (any node
                                                    seeds the slot map)
``redis+sentinel://h:p,h:p/master-name[/db]``       ``Sentinel(...).master_for(master-name)``:
(``rediss+sentinel``: TLS to the data nodes)        follows fail-overs without a restart
==================================================  ==========================================

Why one place: every piece of shared state (budgets, breakers, the cache) must use the same
timeouts and pool bounds, and the cluster/sentinel choice must not leak into them. Every key
of one script call carries the same `{hash tag}`, so scripts are Cluster safe.

Timeouts are short and retries few on purpose: an outage must be noticed in well under a
second, not after redis-py's defaults (no socket timeout, retries with back-off).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff


class RedisConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Client sizing. `pool_size` bounds the connections (per node on a cluster); callers beyond
    it wait up to `pool_wait` seconds (back-pressure, see `gate.py`), never "store down"."""

    url: str
    timeout: float = 0.5  # socket connect/read timeout per command (seconds)
    pool_size: int = 64  # commands in flight per process (and connections per node)
    pool_wait: float = 2.0  # how long a command may queue for a connection
    retries: int = 1


@dataclass(frozen=True, slots=True)
class Topology:
    kind: str  # "single" | "cluster" | "sentinel"
    nodes: tuple[tuple[str, int], ...]
    tls: bool
    master: str = ""  # sentinel only
    db: int = 0
    username: str | None = None
    password: str | None = None


_KINDS = {
    "redis": ("single", False), "rediss": ("single", True), "unix": ("single", False),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
}


def _nodes(netloc: str, url: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rsplit("@", 1)[-1]
    out: list[tuple[str, int]] = []
    for part in filter(None, hosts.split(",")):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        try:
            out.append((host.strip("[]") or "127.0.0.1", int(port) if port else 6379))
        except ValueError:
            raise ValueError(f"bad host:port {part!r} in redis URL {url!r}") from None
    if not out:
        raise ValueError(f"no host in redis URL {url!r}")
    return tuple(out)


def parse_url(url: str) -> Topology:
    """Parse a state URL; a clear `ValueError` for anything we cannot serve."""
    parts = urlsplit(url)
    kind_tls = _KINDS.get(parts.scheme)
    if kind_tls is None:
        raise ValueError(f"unsupported redis URL scheme {parts.scheme!r} (use one of {', '.join(sorted(_KINDS))})")
    kind, tls = kind_tls
    if parts.scheme == "unix":
        return Topology("single", (), False)
    user, password = None, None
    if "@" in parts.netloc:
        creds = parts.netloc.rsplit("@", 1)[0]
        user, _, password = creds.partition(":") if ":" in creds else ("", "", creds)
        user = user or None
    path = [p for p in parts.path.split("/") if p]
    master, db = "", 0
    if kind == "sentinel":
        if not path:
            raise ValueError(f"sentinel URL needs the master name: redis+sentinel://h:p,h:p/<master> ({url!r})")
        master, path = path[0], path[1:]
    if path:
        try:
            db = int(path[0])
        except ValueError:
            raise ValueError(f"bad database number {path[0]!r} in redis URL {url!r}") from None
    db = int(parse_qs(parts.query).get("db", [db])[0])
    if kind == "cluster" and db != 0:
        raise ValueError("Redis Cluster has only database 0")
    return Topology(kind, _nodes(parts.netloc, url), tls, master, db, user, password)


def _common(config: RedisConfig) -> dict[str, Any]:
    return {
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        # Retry a dropped connection once; never a timeout: the shared probe settles those
        # (health.py), so a hung store costs one timeout per command, not two.
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), config.retries,
                       supported_errors=(redis_errors.ConnectionError,)),
    }


def _single(config: RedisConfig, topo: Topology) -> aioredis.Redis:
    pool = BlockingConnectionPool.from_url(
        config.url, max_connections=config.pool_size + 4, timeout=config.pool_wait, **_common(config)
    )
    return aioredis.Redis(connection_pool=pool)


def _cluster(config: RedisConfig, topo: Topology) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in topo.nodes],
        max_connections=config.pool_size + 4,
        ssl=topo.tls,
        username=topo.username,
        password=topo.password,
        **_common(config),
    )


def _sentinel(config: RedisConfig, topo: Topology) -> aioredis.Redis:
    common = _common(config)
    sentinel = Sentinel(
        list(topo.nodes),
        sentinel_kwargs={"socket_timeout": config.timeout, "socket_connect_timeout": config.timeout},
        **common,
    )
    return sentinel.master_for(
        topo.master, ssl=topo.tls, db=topo.db, username=topo.username, password=topo.password,
        max_connections=config.pool_size + 4,
    )


_BUILDERS = {"single": _single, "cluster": _cluster, "sentinel": _sentinel}


def connect(config: RedisConfig) -> Any:
    """A redis-py asyncio client for `config.url` (no I/O happens here)."""
    topo = parse_url(config.url)
    return _BUILDERS[topo.kind](config, topo)


def whole_store_ping(client: Any, kind: str) -> Callable[[], Awaitable[Any]]:
    """The health probe: a PING answered by every node that serves data.

    On a Cluster that is every master: a plain `RedisCluster.ping` is answered by one node, so
    a dead or frozen master (whose slots every request of its tenants needs) looked healthy.
    One master not answering is an outage until the cluster promotes its replica; redis-py
    refreshes its slot map after the error, so the next probe asks the promoted one.
    """
    if kind == "cluster":
        return lambda: client.ping(target_nodes=RedisCluster.PRIMARIES)
    return client.ping


async def replicas_to_confirm(client: Any, kind: str) -> int:
    """How many replicas a write that must survive a fail-over waits for (`WAIT`): one wherever a
    replica could be promoted without it, else none (a WAIT nobody can answer only costs time).

    Sentinel exists to promote a replica: one. A Cluster or a single node: one if a master reports
    a connected replica (`INFO replication`; a Cluster's slot map hides replicas until the first
    write, so it cannot tell), none if not; a Cluster that cannot be asked is assumed to have one.
    """
    if kind == "sentinel":
        return 1
    try:
        if kind == "cluster":
            infos = (await client.info("replication", target_nodes=RedisCluster.PRIMARIES)).values()
        else:
            infos = [await client.info("replication")]
    except Exception:
        return 1 if kind == "cluster" else 0
    return 1 if any(int(info.get("connected_slaves", 0)) > 0 for info in infos) else 0
