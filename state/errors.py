"""What a failed Redis call means for the gateway: its own back-pressure, an ambiguous timeout,
or a store that is really gone. Only the last flips a fail mode; the first is answered with
429/503 + Retry-After to the excess callers; a timeout is settled by one shared probe
(`health.StoreHealth.confirm`).
"""

from __future__ import annotations

import asyncio
import enum

import redis.exceptions as redis_errors


class StoreBusy(Exception):
    """This process has too many store commands in flight (local back-pressure, not an outage)."""


class Failure(enum.Enum):
    BUSY = "busy"  # our own pool/gate is exhausted
    TIMEOUT = "timeout"  # no answer in time: a hung store, or our own event loop under load
    DOWN = "down"  # refused, reset, no master, cluster down: the store is unreachable
    OTHER = "other"  # a bug or a server-side error: not an availability question


_BUSY_MESSAGES = ("No connection available", "Too many connections")


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, (StoreBusy, redis_errors.MaxConnectionsError)):
        return Failure.BUSY
    if isinstance(exc, redis_errors.ConnectionError) and any(m in str(exc) for m in _BUSY_MESSAGES):
        return Failure.BUSY
    if isinstance(exc, (redis_errors.TimeoutError, asyncio.TimeoutError, TimeoutError)):
        return Failure.TIMEOUT
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.ClusterDownError,
                        redis_errors.ReadOnlyError, OSError)):
        return Failure.DOWN
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(("CLUSTERDOWN", "MASTERDOWN", "LOADING")):
        return Failure.DOWN
    return Failure.OTHER
