"""Response cache on a repeated workload: hit rate and the latency of a hit, through the gateway.

A gateway with its state in Redis on loopback serves deterministic requests (temperature 0) of
which a given share repeats an earlier prompt. Reports the hit rate observed against the
expected one, p50/p99 latency of hits and of misses, and tokens saved.

    python bench/cache_hits.py [--requests 2000] [--dup-share 0.5] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_overhead import percentile  # noqa: E402
from tests.gateway_proc import GatewayProcess  # noqa: E402
from tests.stubs.openai_stub import free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--dup-share", type=float, default=0.5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    port = free_port()
    stub = subprocess.Popen([sys.executable, "-m", "tests.stubs.openai_stub", "--port", str(port)], cwd=ROOT)
    policy = Path(tempfile.mkdtemp()) / "cache-bench.yaml"
    policy.write_text(f"""
targets:
  upstream: {{provider: selfhost, model: mock, base_url: "http://127.0.0.1:{port}/v1", pricing: {{input: 2.5, output: 10}}}}
models:
  cached: {{targets: [upstream], cache: {{ttl_seconds: 3600}}}}
""")
    prefix = f"gwbench:{uuid.uuid4().hex[:8]}:"
    gateway = GatewayProcess(policy, redis_url=args.redis_url, extra_args=["--redis-prefix", prefix])
    rng = random.Random(args.seed)
    hits, misses, statuses = [], [], {}
    saved_tokens = 0
    try:
        gateway.wait_ready()
        with httpx.Client(timeout=30, headers={"authorization": f"Bearer {gateway.dev_key}"}) as client:
            for _ in range(50):
                try:
                    if client.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            seen: list[str] = []
            expected_hits = 0
            for i in range(args.requests):
                if seen and rng.random() < args.dup_share:
                    prompt = rng.choice(seen)
                    expected_hits += 1
                else:
                    prompt = f"Question {i}: what is {rng.randrange(10**9)} in words?"
                    seen.append(prompt)
                body = {"model": "cached", "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
                start = time.perf_counter()
                response = client.post(gateway.base_url + "/chat/completions", json=body)
                elapsed = time.perf_counter() - start
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.headers.get("x-gateway-cache") == "hit":
                    hits.append(elapsed)
                    saved_tokens += response.json()["usage"]["total_tokens"]
                else:
                    misses.append(elapsed)
                    time.sleep(0.002)  # the store happens just after the reply
    finally:
        gateway.stop()
        stub.terminate()
        stub.wait(5)
        import redis

        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
    result = {
        "requests": args.requests, "dup_share": args.dup_share, "statuses": statuses,
        "expected_hit_rate": expected_hits / args.requests, "hit_rate": len(hits) / args.requests,
        "hit_p50_ms": percentile(hits, 50) * 1e3, "hit_p99_ms": percentile(hits, 99) * 1e3,
        "miss_p50_ms": percentile(misses, 50) * 1e3, "miss_p99_ms": percentile(misses, 99) * 1e3,
        "tokens_saved": saved_tokens,
    }
    print(json.dumps(result, indent=2))
    print(f"SUMMARY hit rate {result['hit_rate']:.3f} (expected {result['expected_hit_rate']:.3f}); "
          f"hit p50 {result['hit_p50_ms']:.2f} ms / p99 {result['hit_p99_ms']:.2f} ms through the gateway with Redis "
          f"(target p50 <= 2 ms); miss p50 {result['miss_p50_ms']:.2f} ms")


if __name__ == "__main__":
    main()
