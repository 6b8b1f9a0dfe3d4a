"""Broken HTTP framing over raw sockets against a real gateway, on granian and on uvicorn.

Generates N requests (seeded) across the framing faults an HTTP/1.1 body can have: a
Content-Length or chunked body cut short (with and without a half-close), a chunk size that is
not hex or overflows 64 bits, a missing CRLF after chunk data, Content-Length together with
Transfer-Encoding, a transfer coding other than chunked, a declared length over the limit, a
chunk size announced and never sent, plus well-framed controls; on the OpenAI and Anthropic
paths and on a Litestar-routed one (count_tokens). Counts what came back: statuses, 5xx, replies
that are not the caller's protocol's error JSON, silent closes, and hangs (no answer within the
body-read deadline + 3 s). Prints JSON and a one-line summary.

    .venv/bin/python bench/framing_fuzz.py --requests 400
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import STUB_POLICY, write_policy  # noqa: E402
from tests.gateway_proc import GatewayProcess  # noqa: E402
from tests.test_http_framing import exchange as framing_exchange  # noqa: E402
from tests.stubs.openai_stub import OpenAIStub, StubControl  # noqa: E402

KEY = "sk-bench-framing"
PATHS = ["/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens"]


def _head(path: str, framing: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: Bearer {KEY}\r\n"
            f"anthropic-version: 2023-06-01\r\n{framing}\r\n").encode()


def _body(rng: random.Random) -> bytes:
    return json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi " * rng.randint(1, 40)}],
                       "max_tokens": 5}).encode()


def _chunks(body: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(body)), min(3, len(body) - 1)))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]


def case(kind: str, rng: random.Random) -> tuple[str, bytes, bool, bool]:
    """(path, bytes, half-close after sending, well framed)."""
    path, body = rng.choice(PATHS), _body(rng)
    chunked = "transfer-encoding: chunked\r\n"
    parts = _chunks(body, rng)
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    if kind == "valid_length":
        return path, _head(path, f"content-length: {len(body)}\r\n") + body, False, True
    if kind == "valid_chunked":
        return path, _head(path, chunked) + encoded + b"0\r\n\r\n", False, True
    if kind == "length_cut_short":
        return path, _head(path, f"content-length: {len(body) + rng.randint(1, 500)}\r\n") + body, True, False
    if kind == "chunked_cut_short":
        return path, _head(path, chunked) + encoded[: rng.randint(1, len(encoded))], True, False
    if kind == "bad_chunk_size":
        size = rng.choice([b"zz", b"-1", b"0x10", b"1 0", b"10000000000000000", b"18446744073709551616", b"g"])
        return path, _head(path, chunked) + size + b"\r\n" + body + b"\r\n0\r\n\r\n", False, False
    if kind == "missing_crlf":
        first = parts[0]
        return path, _head(path, chunked) + b"%x\r\n%s" % (len(first), first) + b"XX" + encoded, False, False
    if kind == "length_and_chunked":
        return path, _head(path, f"content-length: {rng.randint(0, 99)}\r\n" + chunked) + encoded + b"0\r\n\r\n", False, False
    if kind == "other_coding":
        coding = rng.choice(["gzip, chunked", "deflate, chunked", "chunked, chunked"])
        return path, _head(path, f"transfer-encoding: {coding}\r\n") + encoded + b"0\r\n\r\n", False, False
    if kind == "length_over_limit":
        return path, _head(path, "content-length: 999999999\r\n") + body[:10], False, False
    if kind == "chunk_never_sent":
        return path, _head(path, chunked) + b"ffffffffffffffff\r\n" + body[:5], False, False
    raise ValueError(kind)


KINDS = ["valid_length", "valid_chunked", "length_cut_short", "chunked_cut_short", "bad_chunk_size", "missing_crlf",
         "length_and_chunked", "other_coding", "length_over_limit", "chunk_never_sent"]


def exchange(port: int, data: bytes, half_close: bool, timeout: float) -> tuple[bytes, float, bool]:
    """The test suite's raw-socket exchange, timed, with a hang recorded instead of raised."""
    started = time.monotonic()
    reply, hung = b"", False
    try:
        reply = framing_exchange(port, data, half_close, timeout)
    except socket.timeout:
        hung = True
    except (ConnectionResetError, BrokenPipeError):
        pass
    return reply, time.monotonic() - started, hung


def judge(path: str, reply: bytes, well_framed: bool, kind: str) -> str:
    """'ok' when the reply is what the caller's protocol expects, else what was wrong.

    Content-Length with Transfer-Encoding served by the chunked framing alone and the connection
    closed after the reply is the other answer RFC 9112 §6.3 allows (granian's: its HTTP layer
    drops the Content-Length before the app sees the request): counted apart, as acceptable."""
    if not reply:
        return "silent_close"
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status >= 500:
        return "5xx"
    if status >= 400:
        try:
            error = json.loads(body)
        except ValueError:
            return "not_json"
        if path.startswith("/v1/messages"):
            return "ok" if error.get("type") == "error" and error["error"].get("message") else "wrong_shape"
        return "ok" if isinstance(error.get("error"), dict) and error["error"].get("message") else "wrong_shape"
    if kind == "length_and_chunked" and b"connection: close" in head.lower():
        return "te_wins_and_closed"
    return "ok" if well_framed else "accepted_broken"


def run(server: str, policy: Path, n: int, seed: int, read_timeout: float, concurrency: int) -> dict:
    rng = random.Random(seed)
    kinds = [KINDS[i] if i < len(KINDS) else rng.choice(KINDS) for i in range(n)]
    cases = [(*case(kind, rng), kind) for kind in kinds]
    with GatewayProcess(policy, dev_key=KEY, server=server, extra_args=["--body-read-timeout", str(read_timeout)]) as gw:
        def one(item):
            path, data, half_close, well_framed, kind = item
            reply, seconds, hung = exchange(gw.port, data, half_close, read_timeout + 3)
            status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/1.1 ") else "none"
            return status, ("hang" if hung else judge(path, reply, well_framed, kind)), seconds
        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, cases))
        wall = time.monotonic() - started
    verdicts = Counter(v for _, v, _ in results)
    by_kind: dict[str, Counter] = {}
    for kind, (status, _, _) in zip(kinds, results):
        by_kind.setdefault(kind, Counter())[status] += 1
    return {"server": server, "requests": n, "statuses": dict(Counter(s for s, _, _ in results)),
            "statuses_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "verdicts": dict(verdicts), "bad": n - verdicts["ok"] - verdicts["te_wins_and_closed"],
            "max_seconds": round(max(s for *_, s in results), 2), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="per server")
    ap.add_argument("--seed", type=int, default=25)
    ap.add_argument("--read-timeout", type=float, default=1.0, help="the gateway's --body-read-timeout")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--servers", nargs="+", default=["granian", "uvicorn"])
    args = ap.parse_args()
    directory = Path("/tmp") / f"framing-fuzz-{args.seed}"
    directory.mkdir(exist_ok=True)
    with OpenAIStub(StubControl(api_key="sk-upstream")) as stub:
        policy = write_policy(directory, STUB_POLICY.format(base_url=stub.base_url))
        results = [run(server, policy, args.requests, args.seed, args.read_timeout, args.concurrency)
                   for server in args.servers]
    print(json.dumps(results, indent=2))
    print("framing fuzz: " + "; ".join(
        f"{r['server']} {r['requests']} requests, {r['bad']} not as expected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(r['verdicts'].items()))}), slowest {r['max_seconds']} s"
        for r in results))


if __name__ == "__main__":
    main()
