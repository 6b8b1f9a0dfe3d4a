"""Hostile and broken input: never a 5xx, never a hang, always an error in the caller's protocol.

A property-based fuzz test (hypothesis, a fixed example budget and derandomised so CI is bounded
and repeatable) throws generated bodies and headers at every inference endpoint of a real gateway
process; targeted tests cover nesting depth, chunked bodies over the limit and a caller that
stops sending its body.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import STUB_POLICY, write_policy
from tests.gateway_proc import GatewayProcess

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"]
READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory, _module_stub):
    path = write_policy(tmp_path_factory.mktemp("hostile"), STUB_POLICY.format(base_url=_module_stub.base_url))
    with GatewayProcess(path, extra_args=["--body-read-timeout", str(READ_TIMEOUT)]) as proc:
        yield proc


@pytest.fixture(scope="module")
def http(gw):
    with httpx.Client(base_url=gw.root_url, timeout=10) as client:
        yield client


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Bodies that look like requests (so validation goes deep), with any field replaced by junk.
fields = st.sampled_from(["model", "messages", "prompt", "input", "max_tokens", "stream", "tools", "system", "n",
                          "temperature", "stop", "stream_options", "encoding_format", "metadata", "tool_choice"])
plausible = st.fixed_dictionaries({
    "model": st.sampled_from(["gpt-test", "auto", "", "nope"]),
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", "bogus"]),
                                                "content": json_values}), max_size=3),
    "max_tokens": st.integers(-5, 3000) | st.none(),
}).flatmap(lambda base: st.dictionaries(fields, json_values, max_size=3).map(lambda extra: {**base, **extra}))
raw_bodies = st.one_of(
    plausible.map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
)
header_sets = st.fixed_dictionaries({}, optional={
    "content-type": st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"]),
    "cache-control": st.sampled_from(["no-cache", "only-if-cached", "max-age=abc", "no-store, max-age=0"]),
    "x-request-id": st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=140),
    "x-gateway-priority": st.sampled_from(["batch", "interactive", "urgent!", b"\xff"]),
    "anthropic-version": st.sampled_from(["2023-06-01", ""]),
})


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(ENDPOINTS), body=raw_bodies, headers=header_sets)
def test_fuzzed_bodies_and_headers_never_5xx_or_hang(gw, http, path, body, headers):
    started = time.monotonic()
    response = http.post(path, content=body, headers={"authorization": f"Bearer {gw.dev_key}", **headers})
    assert response.status_code < 500 or response.status_code in (503, 504), (response.status_code, response.text)
    assert time.monotonic() - started < 8
    if response.status_code >= 400:
        error = response.json()
        if path == "/v1/messages":
            assert error["type"] == "error" and error["error"]["message"]
        else:
            assert error["error"]["message"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_deep_nesting_is_refused_before_any_recursive_walk(http, gw, path):
    for depth in (65, 5000, 90_000):  # the last one just under the policy's 200,000-byte limit
        body = '{"model": "gpt-test", "messages": ' + "[" * depth + "]" * depth + "}"
        response = http.post(path, content=body, headers={"authorization": f"Bearer {gw.dev_key}"})
        assert response.status_code == 400, (depth, response.text[:200])


def test_chunked_body_is_capped_by_the_policy_limit_as_it_arrives(http, gw):
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(400):  # 400 x 64 KiB = 25 MiB, far over the policy's 200,000 bytes
            sent += 65536
            yield b" " * 65536

    try:
        response = http.post("/v1/chat/completions", content=chunks(), headers={"authorization": f"Bearer {gw.dev_key}"})
    except httpx.HTTPError:  # the gateway answered and closed while we were still sending: also fine
        assert sent < 400 * 65536
        return
    assert response.status_code == 413 and "200000" in response.json()["error"]["message"]


def test_a_caller_that_stops_sending_is_cut_after_the_read_timeout(gw):
    host, port = "127.0.0.1", gw.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     + f"authorization: Bearer {gw.dev_key}\r\ncontent-length: 500\r\n\r\n".encode() + b'{"model":')
        started = time.monotonic()
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    assert time.monotonic() - started < READ_TIMEOUT + 3
