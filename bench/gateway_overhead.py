"""What the gateway adds on top of an upstream: latency, time to first byte, throughput.

A fast local mock upstream (the OpenAI-protocol stub, in its own process) is measured directly
and through one gateway worker, side by side and interleaved in one run, so machine noise hits
both equally. Gateway pinned to CPU 0; load generator and mock on the other CPU.

    python bench/gateway_overhead.py [--quick] [--target passthrough|sdk|both] [--budgets] [--endpoints]

With --budgets, a second gateway keeps budgets in Redis for a tenant with limits on every window,
and its c=1 latency is interleaved with the first (in-memory state, no limits) in the same run:
the difference is what reserve + settle against Redis add per request.

With --endpoints, the other protocols are measured the same way at c=1 (interleaved with direct
calls to the same mock): /v1/completions and /v1/embeddings forwarded to the OpenAI mock, and
/v1/messages forwarded verbatim to an Anthropic mock (in its own process) by a `passthrough`
Anthropic target, and /v1/responses forwarded verbatim to the OpenAI mock by a `passthrough`
OpenAI target (`store: false`, streamed and not, and with the default `store`, which keeps the
answer for previous_response_id off the response path).

Prints one JSON document and a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_proc import GatewayProcess  # noqa: E402
from tests.stubs.openai_stub import free_port  # noqa: E402

KEY = "sk-bench-dev"
BODY = {"model": "", "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                  {"role": "user", "content": "Say something short about gateways and latency."}],
        "max_tokens": 64, "temperature": 0.7}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


async def one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict, stream: bool) -> tuple[float, float]:
    """Returns (total seconds, seconds to the first body byte)."""
    start = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.read())[:300]!r}")
        if stream:
            first = None
            async for _ in response.content.iter_any():
                if first is None:
                    first = time.perf_counter() - start
        else:
            await response.read()
            first = time.perf_counter() - start
    return time.perf_counter() - start, first


async def closed_loop(session, url, body, headers, stream, concurrency, seconds) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker():
        while time.perf_counter() < deadline:
            total, _ = await one(session, url, body, headers, stream)
            latencies.append(total)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3}


async def interleaved_c1(session, direct, via, stream, n) -> dict:
    """Alternate direct and gateway requests one by one: the fairest c=1 comparison."""
    d_tot, g_tot, d_first, g_first = [], [], [], []
    for i in range(n):
        order = [(direct, d_tot, d_first), (via, g_tot, g_first)]
        if i % 2:
            order.reverse()
        for (url, body, headers), totals, firsts in order:
            total, first = await one(session, url, body, headers, stream)
            totals.append(total)
            firsts.append(first)
    added = lambda a, b, q: (percentile(b, q) - percentile(a, q)) * 1e3  # noqa: E731
    return {
        "n": n,
        "direct_p50_ms": percentile(d_tot, 50) * 1e3, "direct_p99_ms": percentile(d_tot, 99) * 1e3,
        "gateway_p50_ms": percentile(g_tot, 50) * 1e3, "gateway_p99_ms": percentile(g_tot, 99) * 1e3,
        "added_p50_ms": added(d_tot, g_tot, 50), "added_p99_ms": added(d_tot, g_tot, 99),
        "added_ttfb_p50_ms": added(d_first, g_first, 50), "added_ttfb_p99_ms": added(d_first, g_first, 99),
        "added_mean_ms": (statistics.fmean(g_tot) - statistics.fmean(d_tot)) * 1e3,
    }


MESSAGES_BODY = {"model": "messages", "max_tokens": 64,
                 "system": [{"type": "text", "text": "You are a helpful assistant."}],
                 "messages": [{"role": "user", "content": "Say something short about gateways and latency."}]}
ENDPOINT_BODIES = {
    "completions": {"model": "passthrough", "prompt": "Say something short about gateways and latency.",
                    "max_tokens": 64, "temperature": 0.7},
    "embeddings": {"model": "passthrough", "input": ["gateways and latency", "one more sentence"],
                   "encoding_format": "float"},
}


RESPONSES_BODY = {"model": "responses", "instructions": "You are a helpful assistant.", "max_output_tokens": 64,
                  "input": [{"role": "user", "content": "Say something short about gateways and latency."}],
                  "temperature": 0.7}
RESPONSES_CASES = {"responses_c1": ({"store": False}, False), "responses_stream_c1": ({"store": False}, True),
                   "responses_stored_c1": ({}, False)}


def write_policy(directory: Path, upstream: str, budgets: bool, anthropic: str | None = None) -> Path:
    tenants = ""
    if budgets:
        from gateway.auth import hash_key

        tenants = f"""
tenants:
  bench:
    keys: ["sha256:{hash_key(KEY)}"]
    limits: {{requests_per_minute: 100000000, tokens_per_minute: 1000000000, tokens_per_month: 100000000000000}}
"""
    path = directory / "bench-policy.yaml"
    path.write_text(f"""
targets:
  passthrough:
    provider: selfhost
    model: mock
    base_url: {upstream}
  sdk:
    provider: openai
    model: mock
    base_url: {upstream}
    api_key_env: BENCH_UPSTREAM_KEY
  messages:
    provider: anthropic
    transport: passthrough
    model: mock
    base_url: {anthropic or "http://127.0.0.1:9"}
    api_key_env: BENCH_UPSTREAM_KEY
  responses:
    provider: openai
    transport: passthrough
    model: mock
    base_url: {upstream}
    api_key_env: BENCH_UPSTREAM_KEY
models:
  responses: {{targets: [responses]}}
  passthrough: {{targets: [passthrough]}}
  sdk: {{targets: [sdk]}}
  messages: {{targets: [messages]}}
{tenants}
""")
    return path


def start_anthropic_mock(cpus: set[int]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.stubs.anthropic_stub", "--api-key", "x"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    return proc, proc.stdout.readline().strip()


async def endpoints(session, gateway, upstream: str, anthropic: str, headers: dict, n: int) -> dict:
    """c=1, interleaved with direct calls, for each non-chat protocol."""
    out = {}
    for name, body in ENDPOINT_BODIES.items():
        raw = json.dumps(body).encode()
        direct = (f"{upstream}/{name}", raw, headers)
        via = (f"{gateway.base_url}/{name}", raw, headers)
        await interleaved_c1(session, direct, via, False, 50)
        out[f"{name}_c1"] = await interleaved_c1(session, direct, via, False, n)
    anthropic_headers = {"x-api-key": "x", "anthropic-version": "2023-06-01", "content-type": "application/json"}
    for stream in (False, True):
        raw = json.dumps({**MESSAGES_BODY, "stream": stream}).encode()
        direct = (anthropic + "/v1/messages", raw, anthropic_headers)
        via = (gateway.root_url + "/v1/messages", raw, {**anthropic_headers, "x-api-key": KEY})
        await interleaved_c1(session, direct, via, stream, 50)
        out["messages_stream_c1" if stream else "messages_c1"] = await interleaved_c1(session, direct, via, stream, n)
    for name, (extra, stream) in RESPONSES_CASES.items():  # verbatim Responses -> OpenAI
        raw = json.dumps({**RESPONSES_BODY, **extra, "stream": stream}).encode()
        direct = (f"{upstream}/responses", raw, headers)
        via = (f"{gateway.base_url}/responses", raw, headers)
        await interleaved_c1(session, direct, via, stream, 50)
        out[name] = await interleaved_c1(session, direct, via, stream, n)
    return out


async def run(args) -> dict:
    cpus = os.sched_getaffinity(0)
    gateway_cpu = {min(cpus)}
    other = (cpus - gateway_cpu) or cpus
    os.sched_setaffinity(0, other)
    port = free_port()
    stub = subprocess.Popen([sys.executable, "-m", "tests.stubs.openai_stub", "--port", str(port), "--chunks", "22"],
                            cwd=ROOT, preexec_fn=lambda: os.sched_setaffinity(0, other))
    upstream = f"http://127.0.0.1:{port}/v1"
    results: dict = {"machine_cpus": len(cpus), "gateway_cpus": sorted(gateway_cpu), "budgets": args.budgets}
    tmp = Path(tempfile.mkdtemp())
    anthropic_mock, anthropic = start_anthropic_mock(other) if args.endpoints else (None, None)
    gateway = GatewayProcess(write_policy(tmp, upstream, False, anthropic), dev_key=KEY, cpus=gateway_cpu,
                             env={"BENCH_UPSTREAM_KEY": "x"})
    budgeted = None
    if args.budgets:
        budget_dir = tmp / "budgets"
        budget_dir.mkdir()
        budgeted = GatewayProcess(write_policy(budget_dir, upstream, True), dev_key="sk-unused", redis_url=args.redis_url,
                                  cpus=gateway_cpu, env={"BENCH_UPSTREAM_KEY": "x"},
                                  extra_args=["--redis-prefix", f"gwbench:{os.getpid()}:"])
    try:
        gateway.wait_ready()
        if budgeted is not None:
            budgeted.wait_ready()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(50):  # wait for the mock
                try:
                    async with session.get(upstream + "/models") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
            targets = ["passthrough", "sdk"] if args.target == "both" else [args.target]
            n1 = 300 if args.quick else 2000
            if args.endpoints:
                results["endpoints"] = await endpoints(session, gateway, upstream, anthropic, headers, n1)
            secs = 3 if args.quick else 8
            for target in targets:
                for stream in (False, True):
                    body = json.dumps({**BODY, "model": target, "stream": stream}).encode()
                    direct = (upstream + "/chat/completions", body, headers)
                    via = (gateway.base_url + "/chat/completions", body, headers)
                    await interleaved_c1(session, direct, via, stream, 50)  # warm-up
                    kind = "stream" if stream else "json"
                    results[f"{target}_{kind}_c1"] = await interleaved_c1(session, direct, via, stream, n1)
                    d = await closed_loop(session, *direct, stream, 32, secs)
                    g = await closed_loop(session, *via, stream, 32, secs)
                    results[f"{target}_{kind}_c32"] = {"direct": d, "gateway": g}
            if budgeted is not None:
                body = json.dumps({**BODY, "model": "passthrough"}).encode()
                off = (gateway.base_url + "/chat/completions", body, headers)
                on = (budgeted.base_url + "/chat/completions", body, headers)
                await interleaved_c1(session, off, on, False, 50)
                r = await interleaved_c1(session, off, on, False, 300 if args.quick else 2000)
                results["budgets_c1"] = {"off_p50_ms": r["direct_p50_ms"], "on_p50_ms": r["gateway_p50_ms"],
                                         "off_p99_ms": r["direct_p99_ms"], "on_p99_ms": r["gateway_p99_ms"],
                                         "added_p50_ms": r["added_p50_ms"], "added_p99_ms": r["added_p99_ms"]}
    finally:
        gateway.stop()
        if budgeted is not None:
            budgeted.stop()
        stub.terminate()
        stub.wait(5)
        if anthropic_mock is not None:
            anthropic_mock.stdin.close()
            anthropic_mock.terminate()
            anthropic_mock.wait(5)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--target", choices=["passthrough", "sdk", "both"], default="both")
    parser.add_argument("--budgets", action="store_true", help="enable a tenant with budgets (Redis)")
    parser.add_argument("--endpoints", action="store_true", help="also measure completions, embeddings, messages")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = asyncio.run(run(args))
    print(json.dumps(results, indent=2))
    t = "passthrough" if "passthrough_json_c1" in results else "sdk"
    c1, js, st = results[f"{t}_json_c1"], results[f"{t}_json_c32"]["gateway"], results[f"{t}_stream_c32"]["gateway"]
    s1 = results[f"{t}_stream_c1"]
    if "budgets_c1" in results:
        b = results["budgets_c1"]
        print(f"SUMMARY budgets (Redis reserve+settle) add p50 {b['added_p50_ms']:.2f} ms / p99 {b['added_p99_ms']:.2f} ms "
              f"per request at c=1 (target p50 <= 0.5)")
    if "endpoints" in results:
        e = results["endpoints"]
        print("SUMMARY endpoints added p50 at c=1: " + ", ".join(
            f"{name.removesuffix('_c1')} {r['added_p50_ms']:.2f} ms" for name, r in e.items()) + " (target <= 1)")
    print(f"SUMMARY [{t}] added p50 {c1['added_p50_ms']:.2f} ms / p99 {c1['added_p99_ms']:.2f} ms at c=1 "
          f"(targets <=1 / <=3); stream TTFB added p50 {s1['added_ttfb_p50_ms']:.2f} ms; "
          f"{js['rps']:.0f} req/s non-streamed and {st['rps']:.0f} streams/s at c=32 (targets >=1000 / >=300)")


if __name__ == "__main__":
    main()
