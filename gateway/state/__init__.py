"""The shared-state layer: one Redis client per process (single node, TLS, Cluster or Sentinel),
its back-pressure gate, its outage detector, Lua script loading, and quiet logging."""

from gateway.state.client import SharedState
from gateway.state.errors import Failure, StoreBusy, classify
from gateway.state.gate import Gate
from gateway.state.health import StoreHealth
from gateway.state.quiet_log import QuietLog
from gateway.state.scripts import lua, register
from gateway.state.topology import RedisConfig, connect, parse_url

__all__ = [
    "Failure", "Gate", "QuietLog", "RedisConfig", "SharedState", "StoreBusy", "StoreHealth",
    "classify", "connect", "lua", "parse_url", "register",
]
