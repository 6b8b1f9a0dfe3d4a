"""Runs the engine's step loop in its own thread and streams outputs into asyncio.

Every request gets an asyncio.Queue on the caller's event loop; the engine thread pushes outputs
with `call_soon_threadsafe` (one call per loop per step). Leaving the `generate` iterator early —
client disconnect, task cancellation, `aclose()` — aborts the sequence and frees its blocks.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

from .config import EngineConfig
from .engine import LLMEngine
from .outputs import RequestOutput
from .sequence import Priority, SamplingParams, Sequence

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, engine: LLMEngine, *, served_model_name: str | None = None, start: bool = True):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.config = engine.config
        self.model_name = served_model_name or (engine.config.model.rstrip("/").split("/")[-1] or "selfhost")
        self._cv = threading.Condition()
        self._adds: list[tuple[Sequence, list[int], SamplingParams, dict]] = []
        self._aborts: list[str] = []
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = False
        self._error: BaseException | None = None
        self.finish_observers: list[Callable[[Sequence], None]] = []
        self.step_observers: list[Callable[[LLMEngine], None]] = []
        self._snapshot = engine.load()
        self._snapshot["oldest_waiting_age_s"] = 0.0
        self._thread = threading.Thread(target=self._loop, name="selfhost-engine", daemon=True)
        if start:
            self._thread.start()

    @classmethod
    def from_model_dir(cls, model_dir: str, *, served_model_name: str | None = None, **config) -> "AsyncEngine":
        """Load a model directory (any Llama/Qwen2/Qwen3/Mistral-style causal LM) and start the loop.
        `config` are EngineConfig fields (block_size, num_blocks, max_num_seqs, max_model_len, ...)."""
        return cls(LLMEngine(EngineConfig(model=str(model_dir), **config)), served_model_name=served_model_name)

    # ---- public API -----------------------------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        return int(self.config.max_model_len)

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        return self.engine.tokenize(prompt)

    def generate(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                 request_id: str | None = None, priority: Priority | str = Priority.INTERACTIVE,
                 tenant: str | None = None) -> AsyncIterator[RequestOutput]:
        """Return an async iterator of RequestOutputs (one per generated token, text as deltas).
        Raises EngineRequestError at once (at call time) for invalid requests."""
        if self._error is not None:
            raise EngineDeadError(f"engine loop died: {self._error!r}")
        params = params or SamplingParams()
        ids = self.engine.tokenize(prompt)
        self.engine.validate(ids, params)
        return self._generate(ids, params, request_id, priority, tenant)

    async def _generate(self, ids, params, request_id, priority, tenant) -> AsyncIterator[RequestOutput]:
        rid = request_id or uuid.uuid4().hex
        if rid in self._streams:
            rid = f"{rid}-{uuid.uuid4().hex[:8]}"
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = (loop, q)
        if isinstance(priority, str):
            priority = Priority.BATCH if priority == "batch" else Priority.INTERACTIVE
        with self._cv:
            self._adds.append((rid, ids, params, dict(priority=priority, tenant=tenant,
                                                      arrival_time=time.monotonic())))
            self._cv.notify()
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise EngineDeadError(str(item)) from item
                yield item
                if item.request_finished:   # every one of the n choices is done
                    finished = True
                    return
        finally:
            self._streams.pop(rid, None)
            if not finished:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        with self._cv:
            self._aborts.append(request_id)
            self._cv.notify()

    def load(self) -> dict:
        """waiting, running, queued_prefill_tokens, active_decode_tokens, kv_usage (+ queue age)."""
        return dict(self._snapshot)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block (in a non-event-loop thread) until no request is queued or running."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._cv:
                busy = self._adds or self._aborts
            if not busy and not self.engine.has_unfinished():
                return True
            time.sleep(0.01)
        return False

    # ---- engine thread --------------------------------------------------------------------------
    def _drain_commands(self) -> None:
        with self._cv:
            while not (self._adds or self._aborts or self._stop or self.engine.has_unfinished()):
                self._cv.wait()
            adds, self._adds = self._adds, []
            aborts, self._aborts = self._aborts, []
        for rid, ids, params, kw in adds:
            if rid in self._streams:
                try:
                    self.engine.add_request(ids, params, request_id=rid, **kw)
                except Exception as e:
                    loop, q = self._streams[rid]
                    loop.call_soon_threadsafe(q.put_nowait, e)
        for rid in aborts:
            self.engine.abort(rid)
        if adds or aborts:
            self._publish()

    def _publish(self) -> None:
        snap = self.engine.load()
        w = self.engine.scheduler.waiting
        snap["oldest_waiting_age_s"] = round(time.monotonic() - min(s.arrival_time for s in w), 6) if w else 0.0
        self._snapshot = snap

    def _loop(self) -> None:
        while True:
            try:
                self._drain_commands()
                if self._stop:
                    return
                if not self.engine.has_unfinished():
                    continue
                outputs = self.engine.step()
                self._publish()
                for obs in self.step_observers:
                    obs(self.engine)
                self._dispatch(outputs)
            except Exception as e:  # fail every in-flight request rather than hang them
                log.exception("engine step failed")
                for rid in list(self.engine.seqs):
                    self.engine.abort(rid)
                self._publish()
                for rid, (loop, q) in list(self._streams.items()):
                    loop.call_soon_threadsafe(q.put_nowait, e)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for o in outputs:
            if o.finished and o.seq is not None:
                for obs in self.finish_observers:
                    try:
                        obs(o.seq)
                    except Exception:  # observers must not break the loop
                        log.exception("finish observer failed")
            st = self._streams.get(o.request_id)
            if st is None:
                if not o.request_finished:  # nobody listens any more
                    self.engine.abort(o.request_id)
                continue
            by_loop.setdefault(st[0], []).append((st[1], o))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # loop closed
                for _, o in items:
                    self.engine.abort(o.request_id)


def _put_all(items) -> None:
    for q, o in items:
        q.put_nowait(o)
