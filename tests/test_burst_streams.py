"""A burst of mixed traffic over two replicas on one Redis: plain calls, streams, and streams whose
caller hangs up after the first chunk. Past the Redis client's pool (64 per process), in both fail
modes: no 5xx, nothing left reserved, and the books equal what was delivered."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.gateway_proc import GatewayProcess
from tests.test_budgets_http import KEY_A, MESSAGES, REDIS_URL, policy_for, prefix, upstream, usage_of  # noqa: F401

N = 240  # requests in the burst (all at once), 80 of each kind
PROMPT_ESTIMATE = 9  # what the gateway estimates for MESSAGES (the stub reports 7)


async def _mixed_burst(urls: list[str]) -> tuple[list[int], int, int]:
    """(statuses, tokens the upstream reported for complete answers, hang-ups)."""
    reported = 0
    hang_ups = 0
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=N)) as client:
        async def one(i: int) -> int:
            nonlocal reported, hang_ups
            url, kind = urls[i % len(urls)] + "/chat/completions", i % 3
            body = {"model": "budgeted", "messages": MESSAGES, "max_tokens": 10}
            headers = {"authorization": f"Bearer {KEY_A}"}
            if kind == 0:
                response = await client.post(url, headers=headers, json=body)
                if response.status_code == 200:
                    reported += response.json()["usage"]["total_tokens"]
                return response.status_code
            body.update(stream=True, stream_options={"include_usage": True})
            async with client.stream("POST", url, headers=headers, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    return response.status_code
                if kind == 1:  # read to the end: the last chunk carries the usage
                    lines = [line async for line in response.aiter_lines() if line.startswith("data: {")]
                    reported += json.loads(lines[-1][6:])["usage"]["total_tokens"]
                else:  # hang up after the first chunk
                    await anext(response.aiter_bytes())
                    hang_ups += 1
                return 200

        statuses = await asyncio.gather(*(one(i) for i in range(N)))
    return list(statuses), reported, hang_ups


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_mixed_burst_with_hang_ups_settles_everything(tmp_path, upstream, prefix, mode):  # noqa: F811
    budget = 19 * 60
    policy = policy_for(tmp_path, upstream, f"{{tokens_per_day: {budget}, concurrent_requests: 100000}}")
    args = ["--redis-prefix", prefix, "--budgets-fail-mode", mode]
    upstream.control.reply, upstream.control.chunk_delay = " ".join(["w"] * 8), 0.02
    try:
        with GatewayProcess(policy, redis_url=REDIS_URL, extra_args=args) as gw1, \
             GatewayProcess(policy, redis_url=REDIS_URL, extra_args=args) as gw2:
            statuses, reported, hang_ups = asyncio.run(_mixed_burst([gw1.base_url, gw2.base_url]))
            assert all(s in (200, 429) for s in statuses), sorted(set(statuses))
            assert statuses.count(200) >= 40, "at least the budget's worth of estimates is admitted"
            assert hang_ups > 0 and reported > 0
            day = usage_of(gw1, "team-a")["windows"]["tokens_per_day"]
            assert day["reserved"] == 0
            # A hang-up is charged its prompt estimate plus the chunks relayed before the gateway
            # noticed: at least the estimate, at most the whole (10-token) answer.
            charged = day["spent"] - reported
            assert PROMPT_ESTIMATE * hang_ups <= charged <= (PROMPT_ESTIMATE + 10) * hang_ups, (charged, hang_ups)
            assert day["spent"] <= budget
    finally:
        upstream.control.reply, upstream.control.chunk_delay = None, 0.0
