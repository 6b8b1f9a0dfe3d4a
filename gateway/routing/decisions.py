"""Routing decisions and the feedback on them: what the router decided, for analysis and retraining.

Why record decisions at all: a difficulty score is only as good as the labels it was trained on,
and the best labels come from production ("this answer from the cheap model was not good
enough"). A feedback call names a request id; joining it to the decision gives a labelled row
with exactly the model input the gateway used (the embedding and the heuristic features, never
the prompt text), which `hybrid-gateway router train --feedback` retrains on.

Bounded: at most `max_entries` decisions (oldest dropped first) and each kept for `ttl` seconds,
in memory by default or in Redis (shared by every replica) when the gateway has one. Tenant
isolation is structural: every key starts with the tenant, and feedback from one tenant can
never reach (or reveal) another tenant's decision.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("gateway.decisions")

DEFAULT_MAX_ENTRIES = 50_000
DEFAULT_TTL = 7 * 24 * 3600.0


def encode_vector(vec: np.ndarray) -> str:
    """float16, base64: 768 bytes for a MiniLM vector (cosine error ~1e-4, irrelevant for training)."""
    return base64.b64encode(np.asarray(vec, dtype=np.float16).tobytes()).decode()


def decode_vector(text: str) -> list[float]:
    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float32).tolist()


def decision_row(*, request_id: str, tenant: str, difficulty: Any, route: str | None, target: str | None,
                 prompt_tokens: int, completion_tokens: int, cost_usd: float, sticky: str = "",
                 cached_tokens: int = 0, now: float | None = None) -> dict:
    """The JSON-able record of one settled request (difficulty: a `gateway.routing.scorer.Difficulty`;
    sticky: how the conversation's decision was used, see `gateway.router.Plan.sticky`)."""
    row: dict[str, Any] = {
        "request_id": request_id, "tenant": tenant, "ts": round(now if now is not None else time.time(), 3),
        "route": route, "target": target, "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens), "cost_usd": round(float(cost_usd), 8),
    }
    if cached_tokens:  # priced at the cached rate, by the live savings metric and the report alike
        row["cached_tokens"] = int(cached_tokens)
    if sticky:
        row["sticky"] = sticky
    if difficulty is not None:
        row.update(score=difficulty.score, scorer=difficulty.kind or "heuristic", hard=difficulty.hard)
        if difficulty.shadow is not None:
            row.update(shadow_score=difficulty.shadow.score, shadow_scorer=difficulty.shadow.kind or "heuristic")
        model_input = difficulty.model_input
        if model_input is not None:
            row["embedding"] = encode_vector(model_input["embedding"])
            row["features"] = {k: round(float(v), 5) for k, v in model_input["features"].items()}
    return row


class DecisionStore(Protocol):
    async def record(self, row: dict) -> None: ...

    async def add_feedback(self, tenant: str, request_id: str, feedback: dict) -> bool:
        """False when this tenant has no such (unexpired) decision."""
        ...

    async def export(self, tenant: str | None = None, labelled_only: bool = True) -> list[dict]: ...


def _export_row(row: dict) -> dict:
    """A stored decision (+ feedback) as a training row for `router train --feedback`."""
    out = dict(row)
    if isinstance(out.get("embedding"), str):
        out["embedding"] = decode_vector(out["embedding"])
    return out


class MemoryDecisionStore:
    """One process (the embedded default): an insertion-ordered dict, trimmed on every write."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, ttl: float = DEFAULT_TTL, clock=time.time) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("max_entries must be >= 1 and ttl > 0")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._rows: OrderedDict[tuple[str, str], dict] = OrderedDict()

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl
        while self._rows:
            key, row = next(iter(self._rows.items()))
            if row["ts"] >= cutoff and len(self._rows) <= self.max_entries:
                break
            del self._rows[key]

    def __len__(self) -> int:
        return len(self._rows)

    async def record(self, row: dict) -> None:
        key = (row["tenant"], row["request_id"])
        self._rows.pop(key, None)
        self._rows[key] = dict(row)
        self._expire()

    async def add_feedback(self, tenant: str, request_id: str, feedback: dict) -> bool:
        self._expire()
        row = self._rows.get((tenant, request_id))
        if row is None:
            return False
        row["feedback"] = dict(feedback)
        return True

    async def export(self, tenant: str | None = None, labelled_only: bool = True) -> list[dict]:
        self._expire()
        return [_export_row(row) for (t, _), row in self._rows.items()
                if (tenant is None or t == tenant) and (not labelled_only or "feedback" in row)]


class RedisDecisionStore:
    """Shared by every replica: one JSON string per decision (expiring after `ttl`) and a sorted
    set index by time, trimmed to `max_entries` (trimmed decisions are deleted with it)."""

    def __init__(self, redis: Any, prefix: str = "gw:", max_entries: int = DEFAULT_MAX_ENTRIES,
                 ttl: float = DEFAULT_TTL) -> None:
        self.redis = redis
        self.prefix = prefix + "router:"
        self.max_entries = max_entries
        self.ttl = ttl

    def _key(self, tenant: str, request_id: str) -> str:
        return f"{self.prefix}d:{tenant}:{request_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}index"

    async def record(self, row: dict) -> None:
        key = self._key(row["tenant"], row["request_id"])
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, json.dumps(row, separators=(",", ":")), px=int(self.ttl * 1000))
        pipe.zadd(self._index, {key: row["ts"]})
        pipe.zremrangebyscore(self._index, "-inf", row["ts"] - self.ttl)
        await pipe.execute()
        overflow = await self.redis.zcard(self._index) - self.max_entries
        if overflow > 0:
            old = await self.redis.zrange(self._index, 0, overflow - 1)
            if old:
                pipe = self.redis.pipeline(transaction=False)
                pipe.delete(*old)
                pipe.zrem(self._index, *old)
                await pipe.execute()

    async def add_feedback(self, tenant: str, request_id: str, feedback: dict) -> bool:
        key = self._key(tenant, request_id)
        raw = await self.redis.get(key)
        if raw is None:
            return False
        row = json.loads(raw)
        row["feedback"] = dict(feedback)
        ttl_ms = await self.redis.pttl(key)
        await self.redis.set(key, json.dumps(row, separators=(",", ":")), px=max(1, int(ttl_ms)) if ttl_ms > 0 else None)
        return True

    async def export(self, tenant: str | None = None, labelled_only: bool = True) -> list[dict]:
        keys = await self.redis.zrange(self._index, 0, -1)
        if tenant is not None:
            mine = f"{self.prefix}d:{tenant}:"
            keys = [k for k in keys if (k.decode() if isinstance(k, bytes) else k).startswith(mine)]
        rows = []
        for start in range(0, len(keys), 500):
            for raw in await self.redis.mget(keys[start:start + 500]):
                if raw is None:
                    continue
                row = json.loads(raw)
                if not labelled_only or "feedback" in row:
                    rows.append(_export_row(row))
        return rows


async def record_decision(store: DecisionStore | None, **fields: Any) -> None:
    """Record one settled request; never raises (losing an analysis row must not fail a request).

    Fields: request_id, tenant, difficulty (Difficulty | None), route, target, prompt_tokens,
    completion_tokens, cost_usd, cached_tokens, sticky — see `decision_row`.
    """
    if store is None:
        return
    try:
        await store.record(decision_row(**fields))
    except Exception:  # noqa: BLE001
        log.warning("could not record routing decision %s", fields.get("request_id"), exc_info=True)


def training_rows(exported: list[dict]) -> list[dict]:
    """Exported decisions with feedback → rows for `gateway.routing.train.rows_from_feedback`."""
    rows = []
    for row in exported:
        fb = row.get("feedback") or {}
        if "embedding" not in row or "features" not in row:
            continue  # scored without the learned model: no model input to learn from
        out = {"request_id": row["request_id"], "embedding": row["embedding"], "features": row["features"]}
        if fb.get("score") is not None:
            out["score"] = fb["score"]
        elif fb.get("label") is not None:
            out["label"] = fb["label"]
        else:
            continue
        rows.append(out)
    return rows
