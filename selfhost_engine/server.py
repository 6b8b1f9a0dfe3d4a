"""OpenAI-compatible HTTP server (Litestar) around one AsyncEngine."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import openai_api as oa
from .async_engine import AsyncEngine, EngineDeadError
from .errors import EngineRequestError
from .metrics import EngineMetrics

log = logging.getLogger(__name__)
_enc = msgspec.json.Encoder()


class _State:
    def __init__(self, engine: AsyncEngine | None, served_model_name: str | None):
        self.engine = engine
        self.served_model_name = served_model_name
        self.metrics: EngineMetrics | None = EngineMetrics(engine) if engine else None
        self.load_error: BaseException | None = None
        self.created = int(time.time())

    def set_engine(self, engine: AsyncEngine) -> None:
        self.metrics = EngineMetrics(engine)
        self.engine = engine

    def require(self) -> AsyncEngine:
        if self.engine is None:
            raise _NotReady()
        return self.engine


class _NotReady(Exception):
    pass


def _json(status: int, obj) -> Response:
    return Response(content=_enc.encode(obj), status_code=status, media_type="application/json")


def _error(status: int, message: str, type_: str, code: str | None = None) -> Response:
    return _json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}})


def create_app(engine: AsyncEngine | None = None, *, engine_factory: Callable[[], AsyncEngine] | None = None,
               served_model_name: str | None = None) -> Litestar:
    """Build the app. Pass a running engine, or an `engine_factory` that is run in a background
    thread at startup (then /readyz answers 503 until the model is loaded)."""
    state = _State(engine, served_model_name)

    async def body_of(request: Request) -> dict:
        raw = await request.body()
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError as e:
            raise EngineRequestError(f"invalid JSON body: {e}", code="invalid_json") from e
        if not isinstance(body, dict):
            raise EngineRequestError("the request body must be a JSON object")
        return body

    async def sse(first: bytes, agen: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            yield b"data: " + first + b"\n\n"
            async for chunk in agen:
                yield b"data: " + chunk + b"\n\n"
        except EngineDeadError as e:
            yield b"data: " + _enc.encode({"error": {"message": str(e), "type": "server_error",
                                                     "param": None, "code": "engine_error"}}) + b"\n\n"
        finally:
            await agen.aclose()   # on client disconnect this aborts the sequence and frees its blocks
        yield b"data: [DONE]\n\n"

    async def respond(request: Request, chat: bool) -> Response:
        eng = state.require()
        body = await body_of(request)
        if body.get("stream"):
            agen = (oa.chat_completion_stream if chat else oa.completion_stream)(eng, body)
            try:
                first = await agen.__anext__()   # validation errors surface here, before any header
            except BaseException:
                await agen.aclose()
                raise
            return Stream(sse(first, agen), media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await (oa.chat_completion if chat else oa.completion)(eng, body)
        return _json(200, result)

    @post("/v1/chat/completions", status_code=200)
    async def chat_completions(request: Request) -> Response:
        return await respond(request, True)

    @post("/v1/completions", status_code=200)
    async def completions(request: Request) -> Response:
        return await respond(request, False)

    @get("/v1/models")
    async def models() -> Response:
        eng = state.require()
        return _json(200, {"object": "list", "data": [{"id": eng.model_name, "object": "model",
                                                       "created": state.created, "owned_by": "selfhost",
                                                       "max_model_len": eng.max_model_len}]})

    @get("/healthz")
    async def healthz() -> Response:
        if state.load_error is not None or (state.engine is not None and not state.engine.is_running):
            return _json(503, {"status": "error"})
        return _json(200, {"status": "ok"})

    @get("/readyz")
    async def readyz() -> Response:
        if state.engine is not None and state.engine.is_running:
            return _json(200, {"status": "ready", "model": state.engine.model_name})
        return _json(503, {"status": "loading" if state.load_error is None else "failed"})

    @get("/load")
    async def load_() -> Response:
        return _json(200, oa.load(state.require()))

    @get("/metrics")
    async def metrics() -> Response:
        if state.metrics is None:
            return Response(content=b"", media_type=CONTENT_TYPE_LATEST)
        return Response(content=generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def on_request_error(_: Request, exc: EngineRequestError) -> Response:
        return _json(400, exc.to_openai())

    def on_not_ready(_: Request, exc: _NotReady) -> Response:
        return _error(503, "the model is still loading", "server_error", "not_ready")

    def on_dead(_: Request, exc: EngineDeadError) -> Response:
        return _error(500, str(exc), "server_error", "engine_error")

    def startup() -> None:
        if state.engine is None and engine_factory is not None:
            def build():
                try:
                    state.set_engine(engine_factory())
                except BaseException as e:  # reported by /healthz and /readyz
                    log.exception("model load failed")
                    state.load_error = e
            threading.Thread(target=build, name="selfhost-load", daemon=True).start()

    def shutdown() -> None:
        if state.engine is not None:
            state.engine.shutdown()

    app = Litestar(
        route_handlers=[chat_completions, completions, models, healthz, readyz, load_, metrics],
        exception_handlers={EngineRequestError: on_request_error, _NotReady: on_not_ready,
                            EngineDeadError: on_dead},
        on_startup=[startup], on_shutdown=[shutdown], debug=False,
    )
    app.state.selfhost = state
    return app
