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

from protocols.text import text_of

from .async_engine import AsyncEngine
from .engine import MAX_LOGPROBS
from .errors import EngineRequestError, PromptTooLongError
from .openai_logprobs import chat_logprobs, completion_logprobs
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


def _logprobs(body: dict, chat: bool) -> int | None:
    """chat: `logprobs` (bool) + `top_logprobs` (0..20); completions: `logprobs` (0..20)."""
    if not chat:
        return _num(body, "logprobs", None, int, 0, MAX_LOGPROBS)
    on = body.get("logprobs")
    if on is not None and not isinstance(on, bool):
        raise _err("'logprobs' must be a boolean", "logprobs")
    top = _num(body, "top_logprobs", None, int, 0, MAX_LOGPROBS)
    if top is not None and not on:
        raise _err("'top_logprobs' requires 'logprobs': true", "top_logprobs")
    return (top or 0) if on else None


def _params(engine: AsyncEngine, body: dict, prompt_len: int, chat: bool) -> SamplingParams:
    n = _num(body, "n", 1, int, 1, engine.config.max_num_seqs)
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
        n=n, logprobs=_logprobs(body, chat),
    )


def _content_text(content) -> str:
    if content is None:
        return ""
    text = text_of(content, strict=True, sep="")
    if text is None:
        raise _err("message content must be a string or a list of text parts", "messages")
    return text


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


def _usage(lasts: dict) -> dict:
    """Usage of a request from the last output of each choice (prompt counted once)."""
    o = next(iter(lasts.values()))
    done = sum(x.num_output_tokens for x in lasts.values())
    return {"prompt_tokens": o.num_prompt_tokens, "completion_tokens": done,
            "total_tokens": o.num_prompt_tokens + done,
            "prompt_tokens_details": {"cached_tokens": o.num_cached_tokens}}


def _prepare(engine: AsyncEngine, body: dict, chat: bool):
    if not isinstance(body, dict):
        raise _err("the request body must be a JSON object")
    ids = _chat_prompt(engine, body) if chat else _completion_prompt(engine, body)
    if chat is False and body.get("echo"):
        raise _err("'echo' is not supported", "echo", code="unsupported_value")
    if len(ids) >= engine.max_model_len:
        raise PromptTooLongError(len(ids), engine.max_model_len)
    params = _params(engine, body, len(ids), chat)
    engine.engine.validate(ids, params)
    return ids, params, _priority(body)


async def _run(engine: AsyncEngine, body: dict, chat: bool, request_id, tenant):
    """Run a request to the end; returns (params, text per choice, logprobs per choice, last output per choice)."""
    ids, params, prio = _prepare(engine, body, chat)
    text = {i: [] for i in range(params.n)}
    lps = {i: [] for i in range(params.n)}
    lasts: dict = {}
    async with aclosing(engine.generate(ids, params, request_id=request_id, priority=prio, tenant=tenant)) as gen:
        async for o in gen:
            text[o.index].append(o.delta_text)
            lps[o.index].extend(o.logprobs)
            lasts[o.index] = o
    return params, {i: "".join(t) for i, t in text.items()}, lps, dict(sorted(lasts.items()))


async def chat_completion(engine: AsyncEngine, body: dict, *, request_id: str | None = None,
                          tenant: str | None = None) -> dict:
    rid = request_id or uuid.uuid4().hex
    params, text, lps, lasts = await _run(engine, body, True, rid, tenant)
    tok = engine.tokenizer
    return {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or engine.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text[i]},
                         "logprobs": chat_logprobs(tok, lps[i]) if params.logprobs is not None else None,
                         "finish_reason": o.finish_reason} for i, o in lasts.items()],
            "usage": _usage(lasts)}


async def completion(engine: AsyncEngine, body: dict, *, request_id: str | None = None,
                     tenant: str | None = None) -> dict:
    rid = request_id or uuid.uuid4().hex
    params, text, lps, lasts = await _run(engine, body, False, rid, tenant)
    tok = engine.tokenizer
    return {"id": f"cmpl-{rid}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model") or engine.model_name,
            "choices": [{"index": i, "text": text[i],
                         "logprobs": completion_logprobs(tok, lps[i]) if params.logprobs is not None else None,
                         "finish_reason": o.finish_reason} for i, o in lasts.items()],
            "usage": _usage(lasts)}


async def _stream(engine: AsyncEngine, body: dict, chat: bool, request_id, tenant) -> AsyncIterator[bytes]:
    ids, params, prio = _prepare(engine, body, chat)   # raises before the first byte
    rid = request_id or uuid.uuid4().hex
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{rid}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": body.get("model") or engine.model_name}
    if include_usage:
        base["usage"] = None
    tok = engine.tokenizer
    want_lp = params.logprobs is not None
    offsets = [0] * params.n      # completions' text_offset continues across chunks

    def chunk(o, first_index: int | None = None) -> bytes:
        if first_index is not None:
            choice = {"index": first_index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}
        elif chat:
            choice = {"index": o.index, "delta": {"content": o.delta_text} if o.delta_text else {},
                      "logprobs": chat_logprobs(tok, o.logprobs) if want_lp else None,
                      "finish_reason": o.finish_reason}
        else:
            lp = completion_logprobs(tok, o.logprobs, offsets[o.index]) if want_lp else None
            offsets[o.index] += sum(len(t) for t in lp["tokens"]) if lp else 0
            choice = {"index": o.index, "text": o.delta_text, "logprobs": lp, "finish_reason": o.finish_reason}
        return _enc.encode({**base, "choices": [choice]})

    gen = engine.generate(ids, params, request_id=rid, priority=prio, tenant=tenant)
    lasts: dict = {}
    async with aclosing(gen):
        if chat:
            for i in range(params.n):
                yield chunk(None, first_index=i)
        async for o in gen:
            lasts[o.index] = o
            if o.finished or o.delta_text or (want_lp and o.logprobs):
                yield chunk(o)
    if include_usage and lasts:
        yield _enc.encode({**base, "choices": [], "usage": _usage(dict(sorted(lasts.items())))})


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


def prompt_token_count(engine: AsyncEngine, body: dict) -> int:
    """Tokens of a chat request's prompt as this engine will see it (chat template included)."""
    return len(_chat_prompt(engine, body))
