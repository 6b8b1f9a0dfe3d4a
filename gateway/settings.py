"""Process settings: where the policy is, where shared state lives, how to serve.

Settings travel to server workers as JSON in one environment variable, so a forked worker builds
exactly the app the CLI described (including a generated dev key).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec

ENV_VAR = "HYBRID_GATEWAY_SETTINGS"
DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "hybrid-gateway")


@dataclass(slots=True)
class Settings:
    policy_path: str = str(DEFAULT_POLICY)
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None  # None: the embedded default, all state in this process
    redis_prefix: str = "gw:"
    dev_key: str | None = None  # adds a `dev` tenant with this key (GATEWAY_DEV_KEY)
    admin_key: str | None = None  # an admin key besides the policy's admin_keys (GATEWAY_ADMIN_KEY)
    cache_dir: str = field(default_factory=default_cache_dir)
    budgets_fail_mode: str = "closed"  # or "open": Redis down → local share + journal
    # The state layer's Redis client (state/): per-command timeout, commands in flight per
    # process (also the pool size per node), how long an excess command queues before 503.
    redis_timeout: float = 0.5
    redis_pool_size: int = 64
    redis_pool_wait: float = 2.0
    budget_lease: float = 30.0  # a reservation's lease; live replicas renew it every third
    # Litestar reads bodies up to this; the policy's `limits.max_body_bytes` is checked after.
    body_ceiling_bytes: int = 64 * 1024 * 1024
    # A caller that stops sending its body is cut after this many seconds (slow-loris bound).
    body_read_timeout: float = 30.0
    watch_policy: bool = True

    def to_env(self) -> str:
        return msgspec.json.encode(asdict(self)).decode()

    @classmethod
    def from_env(cls) -> "Settings":
        raw = os.environ.get(ENV_VAR)
        return cls(**msgspec.json.decode(raw)) if raw else cls()
