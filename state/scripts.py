"""Lua scripts live as files under `state/lua/`; this loads and registers them.

One script per store (budgets, breakers), one EVALSHA per operation; redis-py reloads a script
after SCRIPT FLUSH or a fail-over to a node that never saw it (NOSCRIPT → SCRIPT LOAD → retry).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).resolve().parent / "lua"


@cache
def lua(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


def register(client: Any, name: str) -> Any:
    """An AsyncScript for `lua/<name>.lua` on `client` (Redis, RedisCluster or a Sentinel master)."""
    return client.register_script(lua(name))
