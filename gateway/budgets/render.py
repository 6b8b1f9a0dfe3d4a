"""What callers see of a budget: OpenAI's `x-ratelimit-*` headers, the 429 message, the usage
document. Shared by every backend, so the answers are identical whichever store served them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.budgets.api import RATE_LIMIT, BudgetExceeded, Reservation
from gateway.budgets.counts import Count
from gateway.budgets.windows import NANO, Window

CONCURRENCY_RETRY_AFTER = 1.0
_HEADER_WINDOWS = (("requests_per_minute", "requests"), ("tokens_per_minute", "tokens"))


def openai_duration(seconds: float) -> str:
    """Durations the way OpenAI's x-ratelimit-reset-* headers write them: `20ms`, `1s`, `6m0s`."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{h}h" if h else ""
    if h or m:
        out += f"{m}m"
    return f"{out}{s}s"


def ratelimit_headers(windows: Sequence[Window], counts: Sequence[Count], now: float) -> dict[str, str]:
    """x-ratelimit-* for the per-minute windows: the tightest (least remaining) of tenant/model."""
    out: dict[str, str] = {}
    for name, suffix in _HEADER_WINDOWS:
        limited = [(w, c) for w, c in zip(windows, counts) if w.name == name and w.limit >= 0]
        if not limited:
            continue
        w, c = min(limited, key=lambda wc: max(0, wc[0].limit - wc[1].used))
        out[f"x-ratelimit-limit-{suffix}"] = str(w.limit)
        out[f"x-ratelimit-remaining-{suffix}"] = str(max(0, w.limit - c.used))
        out[f"x-ratelimit-reset-{suffix}"] = openai_duration((w.resets_at or now) - now)
    return out


def reservation(
    request_id: str, tenant: str, model: str, tokens: int, usd: float, windows: Sequence[Window],
    counts: Sequence[Count], now: float, expires_at: float, backend: str, lease: str = "",
) -> Reservation:
    return Reservation(
        request_id=request_id, tenant=tenant, model=model, tokens=tokens, usd=usd,
        headers=ratelimit_headers(windows, counts, now), expires_at=expires_at, backend=backend,
        keys=tuple(w.key for w in windows), units="".join(w.unit for w in windows),
        expire_at=tuple(w.expire_at for w in windows), lease=lease,
    )


def exceeded(
    tenant: str, windows: Sequence[Window], counts: Sequence[Count], tokens: int, nano: int, now: float
) -> BudgetExceeded:
    failing: list[tuple[float, int]] = []
    for i, (w, c) in enumerate(zip(windows, counts)):
        if w.limit >= 0 and c.used + w.amount(tokens, nano) > w.limit:
            ra = CONCURRENCY_RETRY_AFTER if w.resets_at is None else max(0.001, w.resets_at - now)
            failing.append((ra, i))
    if not failing:  # the store refused but the numbers it returned do not show why: be safe
        failing.append((CONCURRENCY_RETRY_AFTER, 0))
    # The longest wait is the truthful one: no retry can succeed before every failing window frees.
    retry_after, i = max(failing)
    w, used, want = windows[i], counts[i].used, windows[i].amount(tokens, nano)
    if w.unit == "u":
        limit_s, used_s, want_s = f"${w.limit / NANO:.6g}", f"${used / NANO:.6g}", f"${want / NANO:.6g}"
    else:
        limit_s, used_s, want_s = str(w.limit), str(used), str(want)
    scope = f"tenant {tenant!r}" + (f", model {w.model!r}" if w.model else "")
    what = "Rate limit reached" if w.code == RATE_LIMIT else "Quota exceeded"
    when = (f"Try again in {openai_duration(retry_after)}." if w.resets_at is not None
            else "Try again when a request finishes.")
    message = f"{what} for {scope} on {w.name}: limit {limit_s}, in use {used_s}, requested {want_s}. {when}"
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    headers.update(ratelimit_headers(windows, counts, now))
    return BudgetExceeded(
        code=w.code, window=w.name, message=message, retry_after=retry_after, headers=headers, model=w.model,
        limit=(w.limit / NANO if w.unit == "u" else w.limit),
    )


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def usage_doc(
    tenant: str, groups: Sequence[tuple[str | None, list[Window]]], counts: Sequence[Count], backend: str
) -> dict:
    doc: dict[str, Any] = {"tenant": tenant, "backend": backend, "windows": {}, "models": {}}
    it = iter(counts)
    for model, ws in groups:
        target = doc["windows"] if model is None else doc["models"].setdefault(model, {})
        for w in ws:
            c = next(it)
            scale = NANO if w.unit == "u" else 1
            limited = w.limit >= 0
            target[w.name] = {
                "limit": (w.limit / scale if scale > 1 else w.limit) if limited else None,
                "spent": c.spent / scale if scale > 1 else c.spent,
                "reserved": c.reserved / scale if scale > 1 else c.reserved,
                "remaining": ((max(0, w.limit - c.used) / scale if scale > 1 else max(0, w.limit - c.used))
                              if limited else None),
                "resets_at": _iso(w.resets_at),
            }
    return doc
