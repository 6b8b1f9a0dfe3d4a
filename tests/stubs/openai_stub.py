"""A local server that speaks OpenAI's wire protocols (chat completions, legacy completions,
embeddings and the Responses API), for tests and benchmarks.

It answers like OpenAI does: `chat.completion` JSON, SSE `chat.completion.chunk` streams ending
in `data: [DONE]`, usage (also as the final chunk when `stream_options.include_usage`), tool
calls, and OpenAI's error bodies (429 with `retry-after`). Tests script failures through
`StubControl` (fail the next N calls, hang, cut a stream mid-way) and read what it received.

Replies are deterministic: `echo: <last user text>` (or a tool call when tools are offered and
the last message is the user's), so tests can assert on content end to end.

Run standalone (for benchmarks, in its own process): `python -m tests.stubs.openai_stub --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Fault:
    status: int = 500
    message: str = "upstream exploded"
    retry_after: float | None = None
    hang_seconds: float = 0.0
    # Stream only: send this many content chunks, then drop the connection.
    cut_after_chunks: int | None = None
    # Stream only: send this many chunks, then an in-band error event.
    error_after_chunks: int | None = None
    # Answer 200 with something that is not the protocol's JSON (a misconfigured proxy's page).
    garbage: bool = False


@dataclass
class StubControl:
    api_key: str | None = None
    chunks: int | None = None  # fixed number of content chunks per stream (benchmarks)
    reply: str | None = None  # fixed reply text
    refusal: str | None = None  # answer with this refusal (`message.refusal`, streamed as `delta.refusal`)
    usage_every_chunk: bool = False  # streams: usage on every chunk (vLLM's `continuous_usage_stats`)
    usage_prompt_tokens: int | None = None
    cached_tokens: int = 0
    faults: deque[Fault] = field(default_factory=deque)
    always: Fault | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    # What `GET /load` reports (an engine's view of its queued and running work) and whether
    # `GET /healthz` answers 200: the balancer's signals.
    load: dict[str, Any] = field(default_factory=lambda: {"waiting": 0, "running": 0, "queued_prefill_tokens": 0,
                                                           "active_decode_tokens": 0, "kv_usage": 0.0})
    healthy: bool = True
    headers: list[dict[str, str]] = field(default_factory=list)
    record: bool = True
    delay_seconds: float = 0.0
    chunk_delay: float = 0.0  # seconds between streamed chunks (a long stream to hang up on)
    streams_finished: int = 0  # streams sent to the end
    streams_aborted: int = 0  # streams the client (the gateway) closed before the end
    # Decides the answer from the request (an agent's tool round: a call, then the final text):
    # `responder("chat", body)` → (text, tool_calls) and `responder("responses", body)` → output
    # items; None falls back to the echo behaviour.
    responder: Any = None

    def fail_next(self, n: int = 1, **fault: Any) -> None:
        for _ in range(n):
            self.faults.append(Fault(**fault))

    def fail_always(self, **fault: Any) -> None:
        self.always = Fault(**fault)

    def recover(self) -> None:
        self.faults.clear()
        self.always = None

    def next_fault(self) -> Fault | None:
        if self.faults:
            return self.faults.popleft()
        return self.always


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if message.get("role") in ("user", "tool") and content:
            return str(content)
    return ""


def _answer(body: dict[str, Any], control: StubControl) -> tuple[str | None, list[dict[str, Any]] | None]:
    if control.responder is not None:
        decided = control.responder("chat", body)
        if decided is not None:
            return decided
    messages = body.get("messages") or []
    tools = body.get("tools") or []
    last = messages[-1] if messages else {}
    if tools and last.get("role") == "user" and body.get("tool_choice") != "none":
        if tools[0].get("type") == "custom":  # a custom tool is answered with its free-form input
            custom = {"name": tools[0]["custom"]["name"], "input": _last_user_text(messages)}
            return None, [{"id": "call_stub_1", "type": "custom", "custom": custom}]
        function = tools[0]["function"]
        properties = list(((function.get("parameters") or {}).get("properties") or {}))
        argument = "input" if properties == ["input"] else "text"  # a one-string-argument tool gets its own name
        name = function["name"]
        args = json.dumps({argument: _last_user_text(messages)})
        return None, [{"id": "call_stub_1", "type": "function", "function": {"name": name, "arguments": args}}]
    if control.reply is not None:
        return control.reply, None
    prefix = "tool said: " if last.get("role") == "tool" else "echo: "
    text = prefix + _last_user_text(messages)
    if body.get("response_format", {}).get("type") in ("json_object", "json_schema"):
        text = json.dumps({"echo": _last_user_text(messages)})
    return text, None


def _usage(body: dict[str, Any], completion_tokens: int, control: StubControl) -> dict[str, Any]:
    prompt = control.usage_prompt_tokens
    if prompt is None:
        prompt = max(1, len(json.dumps(body.get("messages", []))) // 4)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": control.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _pieces(text: str, control: StubControl) -> list[str]:
    if control.chunks:
        size = max(1, -(-len(text) // control.chunks))
        parts = [text[i : i + size] for i in range(0, len(text), size)]
        while len(parts) < control.chunks:
            parts.append("")
        return parts[: control.chunks] if len("".join(parts[: control.chunks])) == len(text) else parts
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _error_response(fault: Fault) -> web.Response:
    kind = {429: "rate_limit_exceeded", 401: "invalid_api_key", 400: "invalid_request_error"}.get(fault.status)
    body = {"error": {"message": fault.message, "type": "requests" if fault.status == 429 else "server_error",
                      "param": None, "code": kind}}
    headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else None
    return web.json_response(body, status=fault.status, headers=headers)


@dataclass
class Received:
    """An authenticated, recorded request and the fault scripted for it (or the 401 to send)."""

    body: Any = None
    fault: Fault | None = None
    refusal: web.Response | None = None


async def receive(request: web.Request, control: StubControl) -> Received:
    if control.api_key is not None and request.headers.get("authorization") != f"Bearer {control.api_key}":
        return Received(refusal=_error_response(Fault(401, "Incorrect API key provided")))
    body = await request.json()
    if control.record:
        control.requests.append(body)
        control.headers.append(dict(request.headers))
    return Received(body, control.next_fault())


def make_app(control: StubControl) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        got = await receive(request, control)
        if got.refusal is not None:
            return got.refusal
        body, fault = got.body, got.fault
        if fault is not None and fault.hang_seconds:
            await asyncio.sleep(fault.hang_seconds)
            if fault.cut_after_chunks is None and fault.error_after_chunks is None and fault.status == 200:
                fault = None
        if control.delay_seconds:
            await asyncio.sleep(control.delay_seconds)
        if fault is not None and fault.garbage:
            if not body.get("stream"):
                return web.Response(body=b"<html><body>upstream proxy error</body></html>", content_type="text/html")
            garbage = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await garbage.prepare(request)
            await garbage.write(b"data: <html>upstream proxy error</html>\n\ndata: [DONE]\n\n")
            return garbage
        if fault is not None and fault.cut_after_chunks is None and fault.error_after_chunks is None:
            if fault.status >= 400:
                return _error_response(fault)
            fault = None
        text, tool_calls = _answer(body, control)
        created = int(time.time())
        cid = "chatcmpl-stub" + str(len(control.requests))
        model = body.get("model", "stub")
        if not body.get("stream"):
            completion_tokens = max(1, len((text or "").split())) if text is not None else 8
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
            if control.refusal is not None:
                message["content"], message["refusal"] = None, control.refusal
            if tool_calls:
                message["tool_calls"] = tool_calls
            payload = {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if tool_calls else "stop"}],
                "usage": _usage(body, completion_tokens, control),
                "service_tier": "default", "system_fingerprint": "fp_stub",
            }
            return web.Response(body=json.dumps(payload).encode(), content_type="application/json")

        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "fp_stub",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                data["usage"] = _usage(body, 0, control) if control.usage_every_chunk else None
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        try:
            return await send_chat_stream(response, chunk, include_usage, text, tool_calls, fault, body, cid, created,
                                          model, request)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            control.streams_aborted += 1
            raise

    async def send_chat_stream(response, chunk, include_usage, text, tool_calls, fault, body, cid, created, model,
                               request) -> web.StreamResponse:
        await response.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        sent = 0
        if tool_calls:
            call = tool_calls[0]
            await response.write(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                        "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            args = call["function"]["arguments"]
            for i in range(0, len(args), 8):
                await response.write(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 8]}}]}))
                sent += 1
            finish = "tool_calls"
        elif control.refusal is not None:
            for piece in _pieces(control.refusal, control):
                await response.write(chunk({"refusal": piece}))
                sent += 1
            finish = "stop"
        else:
            for piece in _pieces(text or "", control):
                if fault is not None and fault.cut_after_chunks is not None and sent >= fault.cut_after_chunks:
                    # Let the client read what was sent before the cut (one read for data and the
                    # close would make the client's HTTP library drop the data), then drop it.
                    await asyncio.sleep(0.05)
                    request.transport.close()  # drop the connection mid-stream
                    return response
                if fault is not None and fault.error_after_chunks is not None and sent >= fault.error_after_chunks:
                    err = {"error": {"message": fault.message, "type": "server_error", "param": None, "code": None}}
                    await response.write(b"data: " + json.dumps(err).encode() + b"\n\n")
                    return response
                await response.write(chunk({"content": piece}))
                sent += 1
                if control.chunk_delay:
                    await asyncio.sleep(control.chunk_delay)
            finish = "stop"
        await response.write(chunk({}, finish))
        if include_usage:
            usage_chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "system_fingerprint": "fp_stub", "choices": [], "usage": _usage(body, sent, control)}
            await response.write(b"data: " + json.dumps(usage_chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        control.streams_finished += 1
        return response

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "stub"}]})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok" if control.healthy else "down"}, status=200 if control.healthy else 503)

    async def load(_: web.Request) -> web.Response:
        return web.json_response(control.load)

    async def admitted(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        """Auth, recording and scripted errors shared by the legacy and embeddings endpoints."""
        got = await receive(request, control)
        if got.refusal is not None:
            return None, got.refusal
        fault = got.fault
        if fault is not None and fault.hang_seconds:
            await asyncio.sleep(fault.hang_seconds)
        if fault is not None and fault.status >= 400:
            return got.body, _error_response(fault)
        return got.body, None

    async def completions(request: web.Request) -> web.StreamResponse:
        """Legacy completions: `echo: <prompt>` (or the scripted reply), cut at max_tokens words."""
        body, refusal = await admitted(request)
        if refusal is not None:
            return refusal
        prompt = body.get("prompt")
        prompt_text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        words = (control.reply if control.reply is not None else "echo: " + prompt_text).split(" ")
        limit = int(body.get("max_tokens") or 16)
        text = " ".join(words[:limit])
        finish = "length" if len(words) > limit else "stop"
        usage = {"prompt_tokens": max(1, len(prompt_text) // 4), "completion_tokens": min(limit, len(words))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": f"cmpl-stub{len(control.requests)}", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model", "stub")}
        if not body.get("stream"):
            return web.json_response({**base, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                          "finish_reason": finish}], "usage": usage})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        pieces = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
        for piece in pieces:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": None}
            await response.write(b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n")
        done = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}
        await response.write(b"data: " + json.dumps({**base, "choices": [done]}).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(request: web.Request) -> web.Response:
        """Deterministic vectors (a hash of each input), `dimensions` honoured, float or base64."""
        import base64
        import hashlib
        import struct

        body, refusal = await admitted(request)
        if refusal is not None:
            return refusal
        items = body.get("input")
        items = [items] if isinstance(items, str) or (items and isinstance(items[0], int)) else items
        size = int(body.get("dimensions") or 8)
        data, tokens = [], 0
        for index, item in enumerate(items):
            text = item if isinstance(item, str) else json.dumps(item)
            tokens += max(1, len(text) // 4)
            seed = hashlib.sha256(text.encode()).digest()
            vector = [seed[i % 32] / 255.0 for i in range(size)]
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        return web.json_response({"object": "list", "data": data, "model": body.get("model", "stub"),
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    add_responses_route(app, control)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    app.router.add_get("/load", load)
    return app


# ---- the Responses API (`POST /v1/responses`), written from OpenAI's documentation, independently
# of the gateway's own builder (protocols/responses_events.py) so that tests compare two readings.

def _responses_last(items: list[Any]) -> dict[str, Any]:
    return items[-1] if items and isinstance(items[-1], dict) else {}


def _responses_text(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def _responses_answer(body: dict[str, Any], control: StubControl) -> list[dict[str, Any]]:
    """Output items: function calls when function tools are offered and the user spoke last
    (one per tool when parallel calls are allowed), else `echo: <last user text>` or
    `tool said: <outputs>` after function_call_output items; a reasoning item first when the
    caller asked for `reasoning.encrypted_content`."""
    if control.responder is not None:
        decided = control.responder("responses", body)
        if decided is not None:
            return decided
    items = body.get("input")
    items = [{"type": "message", "role": "user", "content": items}] if isinstance(items, str) else list(items or [])
    last = _responses_last(items)
    output: list[dict[str, Any]] = []
    n = uuid.uuid4().hex[:12]  # ids are unique, as OpenAI's are
    if "reasoning.encrypted_content" in (body.get("include") or []):
        output.append({"type": "reasoning", "id": f"rs_stub{n}", "summary": [], "encrypted_content": f"enc-{n}"})
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    user_last = last.get("role") == "user"
    if tools and user_last and body.get("tool_choice") != "none":
        chosen = tools if body.get("parallel_tool_calls", True) else tools[:1]
        for i, tool in enumerate(chosen[:2]):
            output.append({"type": "function_call", "id": f"fc_stub{n}_{i}", "call_id": f"call_stub{n}_{i}",
                           "name": tool["name"], "arguments": json.dumps({"text": _responses_text(last)}),
                           "status": "completed"})
        return output
    if last.get("type") == "function_call_output":
        outputs = [str(i.get("output")) for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
        text = "tool said: " + " ".join(outputs[-2:])
    else:
        user = next((i for i in reversed(items) if isinstance(i, dict) and i.get("role") == "user"), {})
        text = control.reply if control.reply is not None else "echo: " + _responses_text(user)
        fmt = ((body.get("text") or {}).get("format") or {}).get("type")
        if fmt in ("json_object", "json_schema"):
            text = json.dumps({"echo": _responses_text(user)})
    output.append({"type": "message", "id": f"msg_stub{n}", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
    return output


def _responses_document(body: dict[str, Any], output: list[dict[str, Any]], control: StubControl) -> dict[str, Any]:
    words = sum(len(p["text"].split()) for i in output if i["type"] == "message" for p in i["content"])
    words += sum(len(i["arguments"]) // 8 for i in output if i["type"] == "function_call")
    words += sum(len(i["input"]) // 8 for i in output if i["type"] == "custom_tool_call")
    reasoning = 3 if any(i["type"] == "reasoning" for i in output) else 0
    prompt = control.usage_prompt_tokens or max(1, len(json.dumps(body.get("input"))) // 4)
    return {
        "id": f"resp_stub{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
        "status": "completed", "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": body.get("model", "stub"), "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None}, "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0), "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0), "truncation": "disabled", "user": None, "metadata": body.get("metadata") or {},
        "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": control.cached_tokens},
                  "output_tokens": max(1, words) + reasoning, "output_tokens_details": {"reasoning_tokens": reasoning},
                  "total_tokens": prompt + max(1, words) + reasoning},
    }


# Output items whose input streams in deltas: the item's field and the event name it streams under.
_STREAMED_CALL_FIELD = {
    "function_call": ("arguments", "response.function_call_arguments"),
    "custom_tool_call": ("input", "response.custom_tool_call_input"),
}


def _responses_events(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The documented stream for a finished response (without sequence numbers)."""
    skeleton = {**document, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": skeleton},
                                    {"type": "response.in_progress", "response": skeleton}]
    for index, item in enumerate(document["output"]):
        if item["type"] == "message":
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "status": "in_progress", "content": []}})
            part = item["content"][0]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events.append({"type": "response.content_part.added", **where,
                           "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
            words = part["text"].split(" ")
            for i, word in enumerate(words):
                events.append({"type": "response.output_text.delta", **where, "delta": word if i == 0 else " " + word,
                               "logprobs": []})
            events.append({"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []})
            events.append({"type": "response.content_part.done", **where, "part": part})
        elif item["type"] in _STREAMED_CALL_FIELD:  # a call whose input streams in deltas
            field, event = _STREAMED_CALL_FIELD[item["type"]]
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "status": "in_progress", field: ""}})
            where = {"item_id": item["id"], "output_index": index}
            text = item[field]
            for i in range(0, len(text), 8):
                events.append({"type": f"{event}.delta", **where, "delta": text[i:i + 8]})
            events.append({"type": f"{event}.done", **where, field: text})
        else:
            events.append({"type": "response.output_item.added", "output_index": index, "item": item})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": document})
    return events


def add_responses_route(app: web.Application, control: StubControl) -> None:
    async def responses(request: web.Request) -> web.StreamResponse:
        got = await receive(request, control)
        if got.refusal is not None:
            return got.refusal
        body, fault = got.body, got.fault
        if fault is not None and fault.hang_seconds:
            await asyncio.sleep(fault.hang_seconds)
        if control.delay_seconds:
            await asyncio.sleep(control.delay_seconds)
        mid_stream = fault is not None and (fault.cut_after_chunks is not None or fault.error_after_chunks is not None)
        if fault is not None and fault.status >= 400 and not mid_stream:
            return _error_response(fault)
        document = _responses_document(body, _responses_answer(body, control), control)
        if not body.get("stream"):
            return web.Response(body=json.dumps(document).encode(), content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        deltas = 0
        for sequence, event in enumerate(_responses_events(document)):
            if mid_stream and fault.cut_after_chunks is not None and deltas >= fault.cut_after_chunks:
                request.transport.close()
                return response
            if mid_stream and fault.error_after_chunks is not None and deltas >= fault.error_after_chunks:
                error = {"type": "error", "sequence_number": sequence,
                         "error": {"type": "server_error", "code": "server_error", "message": fault.message, "param": None}}
                await response.write(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
                return response
            event = {"type": event["type"], "sequence_number": sequence, **event}
            await response.write(f"event: {event['type']}\ndata: ".encode() + json.dumps(event).encode() + b"\n\n")
            deltas += event["type"].endswith(".delta")
        await response.write_eof()
        return response

    app.router.add_post("/v1/responses", responses)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenAIStub:
    """Runs the stub on its own event loop in a daemon thread; `base_url` ends in `/v1`."""

    def __init__(self, control: StubControl | None = None, port: int | None = None) -> None:
        self.control = control or StubControl()
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> "OpenAIStub":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(make_app(self.control), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> "OpenAIStub":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--reply", default=None)
    args = parser.parse_args()
    control = StubControl(chunks=args.chunks, reply=args.reply, record=False)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(control), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
