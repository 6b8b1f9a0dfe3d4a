"""What budgets add to a request: N sequential reserve+settle pairs, Redis (loopback) and memory.

    python bench/budgets_overhead.py [--n 5000] [--redis redis://127.0.0.1:6379/0] [--no-uvloop]

Prints one JSON document (p50/p99/mean ms per reserve+settle pair and per reserve, and the Redis
memory each finished request keeps: its idempotency record, measured with MEMORY USAGE, held for
`tombstone_ttl` seconds) and a one-line summary. The tenant has every window limited plus a per-model override (12 windows: the worst
case the script handles). Keys go under a unique prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis  # noqa: E402

from gateway.budgets import Budgets, MemoryBudgets, RedisBudgets  # noqa: E402
from policies.schema import TenantLimits, TenantSpec  # noqa: E402

BIG = 10**12
SPEC = TenantSpec(
    limits=TenantLimits(
        requests_per_minute=BIG, tokens_per_minute=BIG, concurrent_requests=BIG,
        tokens_per_day=BIG, tokens_per_month=BIG, usd_per_month=1e6,
    ),
    model_limits={"gpt-x": TenantLimits(requests_per_minute=BIG, tokens_per_minute=BIG, tokens_per_day=BIG)},
)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def run(store: Budgets, n: int, warmup: int) -> dict:
    pairs: list[float] = []
    reserves: list[float] = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        r = await store.reserve(tenant="bench", spec=SPEC, model="gpt-x", request_id=f"r{i}", tokens=1200, usd=0.0042)
        t1 = time.perf_counter()
        await store.settle(r, tokens=800, usd=0.0031)
        t2 = time.perf_counter()
        if i >= warmup:
            pairs.append((t2 - t0) * 1e3)
            reserves.append((t1 - t0) * 1e3)
    return {
        "n": n,
        "pair_p50_ms": round(pct(pairs, 0.50), 4),
        "pair_p99_ms": round(pct(pairs, 0.99), 4),
        "pair_mean_ms": round(statistics.fmean(pairs), 4),
        "reserve_p50_ms": round(pct(reserves, 0.50), 4),
        "reserve_p99_ms": round(pct(reserves, 0.99), 4),
    }


async def main(args: argparse.Namespace) -> dict:
    out: dict = {"loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}
    out["memory"] = await run(MemoryBudgets(), args.n, args.warmup)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis.from_url(args.redis)
    store = RedisBudgets(client, prefix=prefix, owns_client=False)
    try:
        out["redis"] = await run(store, args.n, args.warmup)
        usage = await store.usage("bench", SPEC)
        out["redis"]["check_spent_tokens_day"] = usage["windows"]["tokens_per_day"]["spent"]
        records = [k async for k in client.scan_iter(match=store.plan.record_prefix("bench") + "*", count=1000)]
        sizes = [await client.memory_usage(k) or 0 for k in records[:2000]]
        per_record = statistics.fmean(sizes)
        out["redis"]["records_kept"] = len(records)
        out["redis"]["record_bytes_mean"] = round(per_record, 1)
        out["redis"]["record_ttl_s"] = store.tombstone_ttl
        out["redis"]["record_mb_at_100_rps"] = round(per_record * 100 * store.tombstone_ttl / 2**20, 1)
        await store.aclose()
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        await client.aclose()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args()
    if not a.no_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    res = asyncio.run(main(a))
    print(json.dumps(res, indent=2))
    r, m = res["redis"], res["memory"]
    print(
        f"budgets overhead ({res['loop']}, 12 windows): redis reserve+settle p50 {r['pair_p50_ms']:.3f} ms "
        f"p99 {r['pair_p99_ms']:.3f} ms; memory p50 {m['pair_p50_ms']:.3f} ms p99 {m['pair_p99_ms']:.3f} ms "
        f"(target: redis p50 <= 0.5 ms: {'met' if r['pair_p50_ms'] <= 0.5 else 'NOT met'}); "
        f"{r['record_bytes_mean']:.0f} B per finished request kept {r['record_ttl_s']:.0f} s "
        f"= {r['record_mb_at_100_rps']} MB steady at 100 req/s"
    )
