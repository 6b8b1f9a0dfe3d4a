"""Lua scripts live as files under `state/lua/`; this loads and registers them.

One script per store (budgets, breakers), one EVALSHA per operation; redis-py reloads a script
after SCRIPT FLUSH or a fail-over to a node that never saw it (NOSCRIPT → SCRIPT LOAD → retry).

`run_confirmed` is a script call that must survive a fail-over: followed by `WAIT` on the same
connection (WAIT counts the replicas that acknowledged *this connection's* writes), on the node
that owns the keys when the store is a Cluster.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

LUA_DIR = Path(__file__).resolve().parent / "lua"


@cache
def lua(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


def register(client: Any, name: str) -> Any:
    """An AsyncScript for `lua/<name>.lua` on `client` (Redis, RedisCluster or a Sentinel master)."""
    return client.register_script(lua(name))


async def run_confirmed(client: Any, script: Any, keys: list[str], args: list[Any], replicas: int,
                        timeout: float) -> int:
    """Run `script`, then WAIT up to `timeout` seconds for `replicas` replicas to acknowledge it.

    Returns how many did (0 when none answered in time: the write is on the master only). The
    EVALSHA and the WAIT travel in one pipeline, so they share a connection (on a Cluster, the
    connection to the keys' master). A cluster pipeline does not load scripts itself: a node
    that never saw this one (NOSCRIPT) gets it loaded once and the pipeline is re-sent (nothing
    ran: NOSCRIPT means the script did not execute).
    """
    node = {"target_nodes": client.get_node_from_key(keys[0])} if isinstance(client, RedisCluster) else {}
    for attempt in range(2):
        try:
            async with client.pipeline(transaction=False) as pipe:
                await script(keys=keys, args=args, client=pipe)
                pipe.execute_command("WAIT", replicas, max(1, int(timeout * 1000)), **node)
                replies = await pipe.execute()
            return int(replies[-1])
        except redis_errors.NoScriptError:
            if attempt:
                raise
            await client.script_load(script.script)
    raise AssertionError("unreachable")
