"""Broken HTTP framing over a raw socket, on both servers the gateway runs on (granian, uvicorn):
every case is a 400 (or a 408 at the body-read deadline) as the caller's protocol's error JSON,
never a 500 and never a hang. Before the body guard, granian answered the cut-short and
mis-framed bodies with a plain-text `500 Internal server error`, uvicorn with plain text or no
answer at all, and Litestar's own routes (count_tokens) with a 500.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import STUB_POLICY, write_policy
from tests.gateway_proc import GatewayProcess

READ_TIMEOUT = 1.0
KEY = "sk-test-dev"
CHAT, MESSAGES, COUNT = "/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"
CHUNKED = "transfer-encoding: chunked\r\n"


def head(path: str, framing: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {KEY}\r\nanthropic-version: 2023-06-01\r\n{framing}\r\n").encode()


# name → (path, bytes sent, half-close after sending, expected status)
CASES = {
    "length_cut_short_half_close": (CHAT, head(CHAT, "content-length: 500\r\n") + b'{"model":', True, 400),
    "chunked_cut_short_half_close": (CHAT, head(CHAT, CHUNKED) + b'10\r\n{"model":"gpt-te', True, 400),
    "messages_cut_short_half_close": (MESSAGES, head(MESSAGES, CHUNKED) + b'10\r\n{"model":"gpt-te', True, 400),
    "missing_crlf_after_chunk": (CHAT, head(CHAT, CHUNKED) + b'5\r\n{"modXX5\r\nel":1\r\n0\r\n\r\n', False, 400),
    "chunk_size_zz": (MESSAGES, head(MESSAGES, CHUNKED) + b"zz\r\nabc\r\n0\r\n\r\n", False, 400),
    "chunk_size_2_64": (CHAT, head(CHAT, CHUNKED) + b"10000000000000000\r\nabc", False, 400),
    "length_and_chunked": (CHAT, head(CHAT, "content-length: 10\r\n" + CHUNKED) + b"5\r\nhello\r\n0\r\n\r\n", False, 400),
    "gzip_transfer_coding": (CHAT, head(CHAT, "transfer-encoding: gzip, chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n",
                             False, 400),
    "chunk_size_2_64_minus_1_never_sent": (MESSAGES, head(MESSAGES, CHUNKED) + b"ffffffffffffffff\r\nabc", False, 408),
    # Litestar-routed endpoints read bodies through the same guard.
    "count_tokens_cut_short_half_close": (COUNT, head(COUNT, "content-length: 300\r\n") + b'{"model"', True, 400),
    "count_tokens_slow_body": (COUNT, head(COUNT, "content-length: 300\r\n") + b'{"model"', False, 408),
}


@pytest.fixture(scope="module", params=["granian", "uvicorn"])
def gw(request, tmp_path_factory, _module_stub):
    path = write_policy(tmp_path_factory.mktemp("framing"), STUB_POLICY.format(base_url=_module_stub.base_url))
    with GatewayProcess(path, dev_key=KEY, server=request.param,
                        extra_args=["--body-read-timeout", str(READ_TIMEOUT)]) as proc:
        yield proc


def exchange(port: int, data: bytes, half_close: bool, timeout: float = READ_TIMEOUT + 5) -> bytes:
    """Send `data`, optionally shut our sending side, and read until the reply is complete or closed
    (`socket.timeout` when nothing ends it: a hang). bench/framing_fuzz.py uses it too."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            reply += part
            headers, _, body = reply.partition(b"\r\n\r\n")
            length = [line for line in headers.lower().split(b"\r\n") if line.startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
        return reply


@pytest.mark.parametrize("case", list(CASES))
def test_broken_framing_is_an_error_in_the_callers_protocol(gw, case):
    path, data, half_close, status = CASES[case]
    started = time.monotonic()
    reply = exchange(gw.port, data, half_close)
    assert time.monotonic() - started < READ_TIMEOUT + 3
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
    headers, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower(), headers
    error = json.loads(body)
    if path.startswith(MESSAGES):
        assert error["type"] == "error" and error["error"]["message"], error
    else:
        assert error["error"]["message"] and error["error"]["type"] == "invalid_request_error", error


def test_a_well_framed_chunked_body_is_still_served(gw, openai_stub):
    body = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    reply = exchange(gw.port, head(CHAT, CHUNKED) + chunked, False)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
