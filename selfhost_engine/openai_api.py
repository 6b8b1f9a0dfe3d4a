"""The OpenAI protocol layer, shared by the HTTP server and by the gateway (in-process engine).

    await chat_completion(engine, body, request_id=None, tenant=None) -> dict  (chat.completion)
    chat_completion_stream(engine, body, ...) -> AsyncIterator[bytes]          (chat.completion.chunk JSON)
    await completion(engine, body, ...) -> dict                                (text_completion)
    completion_stream(engine, body, ...) -> AsyncIterator[bytes]
    load(engine) -> dict

Streams yield the JSON payload of each SSE event (no `data: ` prefix, no `[DONE]`). Invalid
requests raise EngineRequestError (non-streamed: from the await; streamed: from the first
iteration, before any bytes are yielded).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import msgspec

from .async_engine import AsyncEngine
from .errors import EngineRequestError, PromptTooLongError
from .sequence import Priority, SamplingParams

_enc = msgspec.json.Encoder()


def _err(msg: str, param: str | None = None, code: str = "invalid_request") -> EngineRequestError:
    return EngineRequestError(msg, code=code, param=param)


def _num(body: dict, key: str, default, kind=float, lo=None, hi=None):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise _err(f"'{key}' must be {'an integer' if kind is int else 'a number'}", key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _err(f"'{key}' must be between {lo} and {hi}", key)
    return kind(v)


def _priority(body: dict) -> Priority:
    p = body.get("priority")
    if p in ("batch", "low") or body.get("service_tier") == "flex":
        return Priority.BATCH
    if p is not None and p not in ("interactive", "high", "default"):
        raise _err("'priority' must be 'interactive' or 'batch'", "priority")
    return Priority.INTERACTIVE


def _params(engine: AsyncEngine, body: dict, prompt_len: int) -> SamplingParams:
    if _num(body, "n", 1, int, 1) != 1:
        raise _err("only n=1 is supported", "n", code="unsupported_value")
    if body.get("best_of") not in (None, 1):
        raise _err("only best_of=1 is supported", "best_of", code="unsupported_value")
    max_len = engine.max_model_len
    mt = body.get("max_completion_tokens")
    key = "max_completion_tokens"
    if mt is None:
        mt, key = body.get("max_tokens"), "max_tokens"
    if mt is not None:
        mt = _num({key: mt}, key, None, int, 1)
        if prompt_len + mt > max_len:
            raise PromptTooLongError(prompt_len, max_len, mt)
    else:
        mt = max_len - prompt_len
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 16:
        raise _err("'stop' must be a non-empty string or a list of up to 16 non-empty strings", "stop")
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
        raise _err("'stop_token_ids' must be a list of integers", "stop_token_ids")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _err("'seed' must be an integer", "seed")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise _err("'ignore_eos' must be a boolean", "ignore_eos")
    return SamplingParams(
        temperature=_num(body, "temperature", 1.0, float, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, float, 0.0, 1.0) or 1e-9,
        top_k=_num(body, "top_k", 0, int, -1) if body.get("top_k") != -1 else 0,
        seed=seed, max_tokens=mt, stop=stop, stop_token_ids=stop_ids, ignore_eos=ignore_eos,
    )


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise _err("only text content parts are supported", "messages")
            parts.append(p["text"])
        return "".join(parts)
    raise _err("message content must be a string or a list of text parts", "messages")


def _chat_prompt(engine: AsyncEngine, body: dict) -> list[int]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _err("'messages' must be a non-empty list", "messages")
    conv = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _err("each message needs a 'role'", "messages")
        role = "system" if m["role"] == "developer" else m["role"]
        conv.append({"role": role, "content": _content_text(m.get("content"))})
    tok = engine.tokenizer
    try:
        text = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    except Exception as e:
        raise _err(f"could not apply the chat template: {e}", "messages") from e
    return tok.encode(text, add_special_tokens=False)


def _completion_prompt(engine: AsyncEngine, body: dict) -> list[int]:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        return engine.tokenize(p)
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return list(p)
    raise _err("'prompt' must be a string or a list of token ids (one prompt only)", "prompt")


def _usage(o) -> dict:
    return {"prompt_tokens": o.num_prompt_tokens, "completion_tokens": o.num_output_tokens,
            "total_tokens": o.num_prompt_tokens + o.num_output_tokens,
            "prompt_tokens_details": {"cached_tokens": o.num_cached_tokens}}


def _prepare(engine: AsyncEngine, body: dict, chat: bool):
    if not isinstance(body, dict):
        raise _err("the request body must be a JSON object")
    ids = _chat_prompt(engine, body) if chat else _completion_prompt(engine, body)
    if chat is False and body.get("echo"):
        raise _err("'echo' is not supported", "echo", code="unsupported_value")
    if len(ids) >= engine.max_model_len:
        raise PromptTooLongError(len(ids), engine.max_model_len)
    params = _params(engine, body, len(ids))
    engine.engine.validate(ids, params)
    return ids, params, _priority(body)


async def _run(engine: AsyncEngine, body: dict, chat: bool, request_id, tenant):
    ids, params, prio = _prepare(engine, body, chat)
    text, last = [], None
    async with aclosing(engine.generate(ids, params, request_id=request_id, priority=prio, tenant=tenant)) as gen:
        async for o in gen:
            text.append(o.delta_text)
            last = o
    return "".join(text), last


async def chat_completion(engine: AsyncEngine, body: dict, *, request_id: str | None = None,
                          tenant: str | None = None) -> dict:
    rid = request_id or uuid.uuid4().hex
    text, o = await _run(engine, body, True, rid, tenant)
    return {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or engine.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": o.finish_reason}],
            "usage": _usage(o)}


async def completion(engine: AsyncEngine, body: dict, *, request_id: str | None = None,
                     tenant: str | None = None) -> dict:
    rid = request_id or uuid.uuid4().hex
    text, o = await _run(engine, body, False, rid, tenant)
    return {"id": f"cmpl-{rid}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model") or engine.model_name,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": o.finish_reason}],
            "usage": _usage(o)}


async def _stream(engine: AsyncEngine, body: dict, chat: bool, request_id, tenant) -> AsyncIterator[bytes]:
    ids, params, prio = _prepare(engine, body, chat)   # raises before the first byte
    rid = request_id or uuid.uuid4().hex
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{rid}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": body.get("model") or engine.model_name}
    if include_usage:
        base["usage"] = None

    def chunk(content: str | None, finish: str | None, first: bool = False) -> bytes:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": content} if content else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        return _enc.encode({**base, "choices": [choice]})

    gen = engine.generate(ids, params, request_id=rid, priority=prio, tenant=tenant)
    async with aclosing(gen):
        if chat:
            yield chunk(None, None, first=True)
        last = None
        async for o in gen:
            last = o
            if o.finished:
                yield chunk(o.delta_text, o.finish_reason)
            elif o.delta_text:
                yield chunk(o.delta_text, None)
    if include_usage and last is not None:
        yield _enc.encode({**base, "choices": [], "usage": _usage(last)})


async def chat_completion_stream(engine: AsyncEngine, body: dict, *, request_id: str | None = None,
                                tenant: str | None = None) -> AsyncIterator[bytes]:
    """Async generator of chat.completion.chunk payloads. An invalid request raises
    EngineRequestError on the first iteration, before any bytes are produced."""
    async with aclosing(_stream(engine, body, True, request_id, tenant)) as s:
        async for b in s:
            yield b


async def completion_stream(engine: AsyncEngine, body: dict, *, request_id: str | None = None,
                            tenant: str | None = None) -> AsyncIterator[bytes]:
    """Async generator of text_completion chunk payloads (same error contract as above)."""
    async with aclosing(_stream(engine, body, False, request_id, tenant)) as s:
        async for b in s:
            yield b


def load(engine: AsyncEngine) -> dict:
    """waiting, running, queued_prefill_tokens, active_decode_tokens, kv_usage (0..1)."""
    return engine.load()
