"""selfhost_engine: a small paged-attention LLM inference engine over unmodified transformers models.

Public entry points:
    AsyncEngine.from_model_dir(dir, **EngineConfig fields)   -> running engine (step loop thread)
    selfhost_engine.openai_api.{chat_completion, chat_completion_stream, completion, completion_stream, load}
    selfhost_engine.tiny_model.ensure_tiny_model(cache_dir)  -> Path of a tiny random model
    selfhost_engine.server.create_app(engine)                -> Litestar app
"""
from .config import EngineConfig
from .errors import EngineRequestError, PromptTooLongError
from .sequence import Priority, SamplingParams

__all__ = ["EngineConfig", "EngineRequestError", "PromptTooLongError", "Priority", "SamplingParams",
           "AsyncEngine", "LLMEngine", "ensure_tiny_model"]


def __getattr__(name):  # lazy: importing the package must not import torch
    if name == "AsyncEngine":
        from .async_engine import AsyncEngine
        return AsyncEngine
    if name == "LLMEngine":
        from .engine import LLMEngine
        return LLMEngine
    if name == "ensure_tiny_model":
        from .tiny_model import ensure_tiny_model
        return ensure_tiny_model
    raise AttributeError(name)
