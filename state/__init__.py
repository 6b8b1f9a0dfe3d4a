"""The shared-state layer: one Redis client per process (single node, TLS, Cluster or Sentinel),
its back-pressure gate, its outage detector, Lua script loading, and quiet logging."""

from state.client import SharedState
from state.errors import Failure, StoreBusy, classify
from state.gate import Gate
from state.health import StoreHealth
from state.quiet_log import QuietLog
from state.scripts import lua, register, run_confirmed
from state.topology import RedisConfig, connect, parse_url, replicas_to_confirm, whole_store_ping

__all__ = [
    "Failure", "Gate", "QuietLog", "RedisConfig", "SharedState", "StoreBusy", "StoreHealth",
    "classify", "connect", "lua", "parse_url", "register", "replicas_to_confirm", "run_confirmed",
    "whole_store_ping",
]
