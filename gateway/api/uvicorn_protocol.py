"""uvicorn's httptools protocol, with its framing refusals in the caller's protocol.

uvicorn answers an HTTP parse error itself (a bad chunk size, a missing CRLF after chunk data,
Content-Length together with Transfer-Encoding) with `400 Invalid HTTP request received.` as
plain text, and closes the connection; the app only sees `http.disconnect`. The status is right,
the body is not what an SDK can read. This subclass writes the same 400 as the error JSON of the
protocol the request's path speaks (the body guard's choice, `gateway/api/body.py`).

A caller that half-closes (shuts down its sending side) before its body is complete can still
read an answer, but uvicorn closes the connection on end-of-file without one: here it gets the
same 400 first.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.body import api_for_path
from protocols.errors import body_for


class GatewayHttpToolsProtocol(HttpToolsProtocol):
    def eof_received(self) -> None:
        cycle = self.cycle  # a body that stopped short of its framing, nothing answered yet
        if cycle is not None and cycle.more_body and not cycle.response_started:
            self.send_400_response("The request body ended before it was complete.")

    def send_400_response(self, msg: str) -> None:
        path = getattr(self, "url", b"").partition(b"?")[0].decode("latin-1")
        body = body_for(api_for_path(path), 400, f"Invalid HTTP framing: {msg}", code="invalid_framing")
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nx-gateway-target: none\r\n"
                    b"connection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()
