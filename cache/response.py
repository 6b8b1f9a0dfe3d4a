"""Exact response cache: deterministic answers (any protocol), per tenant, replayable as streams.

Rules (the cache must never serve one tenant's answer to another, nor a sampled, personalised
or `no-store` request's answer to anyone):

* Keys live in the tenant's namespace, `t:<tenant>:r:<sha256>`, and the tenant is hashed into
  the digest as well.
* Only deterministic requests are cacheable: `temperature == 0` (or `top_k == 1`, a greedy
  extension some engines accept), and `n` absent or 1. A missing `temperature` means sampled
  (OpenAI's default is 1).
* The digest covers the resolved route name and the whole request body except fields that
  only change how the answer is delivered (`stream`, `stream_options`). Everything else —
  messages, tools, tool_choice, sampling parameters, response_format, stop, seed, max tokens,
  logprobs, unknown extension fields — is part of the key, so any change that could change the
  answer changes the key.
* `user` / `safety_identifier` (the caller's end-user id) stay IN the key: an answer given to
  one end user is only ever replayed to the same end user of the same tenant, so requests a
  caller marks as personalised are never shared across its users.
* Normalisation: canonical JSON (sorted keys, no whitespace), integral floats written as ints
  (`0.0` == `0`), `null` top-level fields dropped (OpenAI treats them as absent), `n: 1` dropped.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

from policies.schema import CacheSpec, Pricing
from protocols.usage import Usage

from .store import Store

__all__ = [
    "CacheStatus",
    "CacheDecision",
    "CachedAnswer",
    "Savings",
    "ResponseCache",
    "canonical_json",
    "is_deterministic",
    "parse_cache_control",
    "savings",
    "tenant_prefix",
]

# Fields that change only the delivery of an answer, never its content.
DELIVERY_FIELDS = frozenset({"stream", "stream_options"})
KEY_VERSION = 1


class CacheStatus(StrEnum):
    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """What to do with the cache for one request.

    `status` is the provisional `x-gateway-cache` value: `miss` when a lookup will happen (the
    gateway turns it into `hit` when the lookup answers), `bypass` when the cache is not read
    (`no-cache` refreshes the entry but is still reported as `bypass`, so hit rates only count
    real lookups). `semantic`: a semantic lookup/store is allowed as well. `max_age`: from the
    request's `Cache-Control: max-age=N`, the oldest entry the caller accepts.
    """

    lookup: bool
    store: bool
    status: CacheStatus
    reason: str
    semantic: bool = False
    max_age: float | None = None


@dataclass(slots=True)
class CachedAnswer:
    """A cached `chat.completion` JSON document and the usage of the call that produced it."""

    body: bytes
    usage: Usage
    stored_at: float  # wall-clock seconds
    key: str = ""
    similarity: float | None = None  # set by the semantic cache

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.stored_at)

    def headers(self) -> dict[str, str]:
        """Response headers that explain this hit (the semantic cache adds its scores)."""
        return {"x-gateway-cache-similarity": f"{self.similarity:.4f}"} if self.similarity is not None else {}


@dataclass(frozen=True, slots=True)
class Savings:
    tokens: int
    usd: float


class _Entry(msgspec.Struct, array_like=True):
    v: int
    body: bytes
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    stored_at: float


_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(_Entry)


# --------------------------------------------------------------------------- normalisation


def _normalise(obj: Any) -> Any:
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError("non-finite number")
        if obj.is_integer() and abs(obj) < 2**53:
            return int(obj)
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _normalise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalise(v) for v in obj]
    raise TypeError(f"unsupported value in request body: {type(obj).__name__}")


def normalise_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The answer-relevant part of a request body, normalised (raises on non-JSON values)."""
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k in DELIVERY_FIELDS or v is None:
            continue
        if k == "n" and v == 1 and not isinstance(v, bool):
            continue
        out[k] = _normalise(v)
    return out


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace: equal documents encode to equal bytes."""
    return msgspec.json.encode(_normalise(obj), order="sorted")


def is_deterministic(body: Mapping[str, Any], always: bool = False) -> tuple[bool, str]:
    """(cacheable, reason). Only greedy, single-choice requests are deterministic enough;
    `always` for protocols whose answers do not sample (embeddings)."""
    if always:
        return True, "deterministic"
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        return False, "n>1"
    top_k = body.get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k == 1:
        return True, "greedy"
    temperature = body.get("temperature")
    if temperature is None:
        return False, "sampled"  # OpenAI's default temperature is 1
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        return False, "sampled"
    if temperature == 0:
        return True, "greedy"
    return False, "sampled"


def tenant_prefix(tenant: str) -> str:
    """Every cache key of a tenant starts with this (exact entries and semantic indexes)."""
    return f"t:{tenant}:"


def _digest(kind: str, tenant: str, route: str, payload: Any) -> str | None:
    try:
        material = canonical_json({"v": KEY_VERSION, "kind": kind, "tenant": tenant, "route": route, "req": payload})
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(material).hexdigest()


# --------------------------------------------------------------------------- Cache-Control


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        lname = name.lower()
        for k, v in headers.items():
            if k.lower() == lname:
                return v
        return ""
    return value


def parse_cache_control(value: str) -> dict[str, str | None]:
    """`no-cache, max-age=0` → {"no-cache": None, "max-age": "0"} (directives lower-cased)."""
    out: dict[str, str | None] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, arg = part.partition("=")
        out[name.strip().lower()] = arg.strip().strip('"') if sep else None
    return out


# --------------------------------------------------------------------------- the cache


# What a stored answer must look like, per protocol: its `object` (or `type`) and the field that
# carries the answer. Anything else (an error body, garbage) is never stored.
_ANSWERS: dict[str, str] = {
    "chat.completion": "choices",
    "text_completion": "choices",
    "list": "data",
    "response": "output",
    "message": "content",
}


def _is_answer(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    field = _ANSWERS.get(doc.get("object") or doc.get("type") or "")
    return field is not None and bool(doc.get(field))


class ResponseCache:
    """Exact cache over a `Store`. Counters: `hits`, `misses`, `stores`, `rejected`."""

    def __init__(self, store: Store) -> None:
        self.backend = store  # (`store` is the write method)
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.rejected = 0  # store() refusals: size cap, bad body, no key

    # ---- keys

    def cache_key(self, tenant: str, route: str, body: Mapping[str, Any], *, deterministic: bool = False) -> str | None:
        """`t:<tenant>:r:<sha256>`, or None when the request is not cacheable."""
        ok, _ = is_deterministic(body, deterministic)
        if not ok:
            return None
        try:
            normalised = normalise_request(body)
        except (TypeError, ValueError):
            return None
        digest = _digest("exact", tenant, route, normalised)
        return None if digest is None else f"{tenant_prefix(tenant)}r:{digest}"

    # ---- policy

    def decision(self, headers: Mapping[str, str], spec: CacheSpec, body: Mapping[str, Any], *,
                 deterministic: bool = False) -> CacheDecision:
        if not spec.enabled:
            return CacheDecision(False, False, CacheStatus.BYPASS, "disabled")
        cc = parse_cache_control(_header(headers, "cache-control"))
        if "no-store" in cc:
            return CacheDecision(False, False, CacheStatus.BYPASS, "no-store")
        ok, reason = is_deterministic(body, deterministic)
        if not ok:
            return CacheDecision(False, False, CacheStatus.BYPASS, reason)
        semantic = spec.semantic.enabled
        pragma = _header(headers, "pragma").lower()
        if "no-cache" in cc or ("no-cache" in pragma and not cc):
            return CacheDecision(False, True, CacheStatus.BYPASS, "no-cache", semantic=semantic)
        max_age: float | None = None
        if cc.get("max-age") is not None:
            try:
                max_age = max(0.0, float(cc["max-age"]))  # type: ignore[arg-type]
            except ValueError:
                max_age = None
            if max_age == 0:
                return CacheDecision(False, True, CacheStatus.BYPASS, "no-cache", semantic=semantic)
        return CacheDecision(True, True, CacheStatus.MISS, "cacheable", semantic=semantic, max_age=max_age)

    # ---- read / write

    async def lookup(self, key: str | None, *, max_age: float | None = None) -> CachedAnswer | None:
        """The cached answer for `key`, or None (miss, expired, older than `max_age`, corrupt)."""
        if key is None:
            return None
        answer = await self.read(key, max_age=max_age)
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    async def read(self, key: str, *, max_age: float | None = None) -> CachedAnswer | None:
        """`lookup` without touching the hit/miss counters (used by the semantic cache)."""
        raw = await self.backend.get(key)
        if raw is None:
            return None
        try:
            entry = _entry_decoder.decode(raw)
        except (msgspec.DecodeError, TypeError, ValueError):
            return None
        answer = CachedAnswer(
            body=entry.body,
            usage=Usage(entry.prompt_tokens, entry.completion_tokens, entry.cached_tokens),
            stored_at=entry.stored_at,
            key=key,
        )
        if max_age is not None and answer.age > max_age:
            return None
        return answer

    async def store(self, key: str | None, completion_body: bytes, usage: Usage, ttl: float, max_entry_bytes: int) -> bool:
        """Store a finished `chat.completion`; False when refused (no key, too big, not a
        completion, ttl <= 0). With a best-effort store a dropped write still answers True;
        the store counts it (`RedisStore.errors`)."""
        if key is None or not (ttl > 0) or len(completion_body) > max_entry_bytes:
            self.rejected += 1
            return False
        try:
            doc = msgspec.json.decode(completion_body)
        except msgspec.DecodeError:
            self.rejected += 1
            return False
        if not _is_answer(doc):
            self.rejected += 1
            return False
        entry = _Entry(
            KEY_VERSION, bytes(completion_body), usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, time.time()
        )
        await self.backend.set(key, _entry_encoder.encode(entry), ttl)
        self.stores += 1
        return True

    async def invalidate(self, key: str) -> None:
        await self.backend.delete(key)


# --------------------------------------------------------------------------- savings


def savings(usage: Usage, pricing: Pricing) -> Savings:
    """Tokens and USD a cache hit saved: what the original call cost, at the target's prices."""
    usd = pricing.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    return Savings(tokens=usage.total_tokens, usd=usd)
