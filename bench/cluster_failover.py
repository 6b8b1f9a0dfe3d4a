"""A Redis Cluster master killed under load, seen through a real gateway: what requests got,
what /readyz said meanwhile, how often the store state flipped, and whether the books equal the
delivered usage when the killed master's replica lagged.

Starts its own Cluster (3 masters + 3 replicas, 1 s node timeout) and stub upstream on free
ports. Per fail mode: requests in a closed loop, each followed by a /readyz poll; the master of the
tenant's slot is frozen-replica'd (its replica SIGSTOPped and its link cut) for `--lagging`
requests, then SIGKILLed and the replica resumed; the loop runs until requests succeed again.
Prints JSON and a one-line summary.

    .venv/bin/python bench/cluster_failover.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gateway_proc import GatewayProcess  # noqa: E402
from tests.redis_servers import Cluster  # noqa: E402
from tests.stubs.openai_stub import OpenAIStub, StubControl  # noqa: E402
from tests.test_budgets_http import policy_for  # noqa: E402
from tests.test_store_outages import TENANT_KEY, ask, log_count, spent  # noqa: E402


def one_mode(mode: str, upstream: OpenAIStub, lagging: int, limit_s: float) -> dict:
    cluster = Cluster(replicas=1, node_timeout_ms=1000)
    try:
        policy = policy_for(Path(tempfile.mkdtemp()), upstream, "{tokens_per_day: 100000000}")
        with GatewayProcess(policy, redis_url=cluster.url, extra_args=["--budgets-fail-mode", mode]) as gw:
            answered = sum(ask(gw) == 200 for _ in range(20))
            master = cluster.owner(TENANT_KEY)
            replica = cluster.replica_of(master)
            replica.pause()
            master.client().execute_command("CLIENT", "KILL", "TYPE", "replica")
            try:
                answered += sum(ask(gw) == 200 for _ in range(lagging))
                time.sleep(0.5)
                master.stop()
                killed = time.monotonic()
            finally:
                replica.resume()
            pairs, outage_seen, healthy_in_a_row = [], False, 0
            while time.monotonic() - killed < limit_s:
                request = ask(gw)
                readiness = httpx.get(gw.root_url + "/readyz", timeout=10)
                degraded = readiness.json()["degraded"]
                pairs.append((round(time.monotonic() - killed, 3), request, readiness.status_code))
                answered += request == 200
                outage_seen = outage_seen or request != 200 or degraded
                healthy = outage_seen and request == 200 and readiness.status_code == 200 and not degraded
                healthy_in_a_row = healthy_in_a_row + 1 if healthy else 0
                if healthy_in_a_row == 10:  # recovered for good, not one lucky answer
                    break
            refused = [p for p in pairs if p[1] != 200]
            flips = sum(1 for a, b in zip(pairs, pairs[1:]) if (a[1] == 200) != (b[1] == 200))
            books = None
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and books != answered * 10:
                books = spent(gw)
                time.sleep(0.2)
            return {
                "mode": mode, "requests_answered": answered, "tokens_delivered": answered * 10, "tokens_booked": books,
                "tokens_lost": answered * 10 - (books or 0),
                "outage_s_seen_by_requests": refused[-1][0] if refused else 0.0,
                "requests_refused": len(refused),
                "request_outcome_flips": flips,  # refused ↔ served transitions after the kill (2 = one outage)
                "refused_while_ready_200": sum(1 for _, request, readiness in pairs if request != 200 and readiness == 200),
                "reachable_again_lines": log_count(gw, "reachable again"),
                "recovery_step_failed_lines": log_count(gw, "recovery step failed"),
            }
    finally:
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lagging", type=int, default=20, help="requests answered while the replica lags")
    ap.add_argument("--limit", type=float, default=30.0, help="seconds to wait for recovery")
    ap.add_argument("--modes", nargs="+", default=["closed", "open"])
    args = ap.parse_args()
    with OpenAIStub(StubControl(usage_prompt_tokens=7)) as upstream:
        results = [one_mode(mode, upstream, args.lagging, args.limit) for mode in args.modes]
    print(json.dumps(results, indent=2))
    print("cluster master kill: " + "; ".join(
        f"fail-{r['mode']}: {r['tokens_lost']} of {r['tokens_delivered']} tokens lost, outage {r['outage_s_seen_by_requests']} s "
        f"({r['requests_refused']} refused, {r['refused_while_ready_200']} of them while /readyz said 200, "
        f"{r['request_outcome_flips']} refused/served flips), "
        f"{r['reachable_again_lines']} 'reachable again' / {r['recovery_step_failed_lines']} 'recovery step failed' lines"
        for r in results))


if __name__ == "__main__":
    main()
