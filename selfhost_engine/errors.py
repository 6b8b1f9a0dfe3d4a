"""Request-level errors: anything here maps to an HTTP 400 OpenAI error JSON."""
from __future__ import annotations


class EngineRequestError(Exception):
    """A bad request (invalid parameters, prompt too long). `code` is an OpenAI-style error code."""

    def __init__(self, message: str, code: str | None = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param

    def to_openai(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error",
                          "param": self.param, "code": self.code}}


class PromptTooLongError(EngineRequestError):
    """The prompt (plus room for one generated token) does not fit in max_model_len."""

    def __init__(self, prompt_len: int, max_model_len: int, max_tokens: int | None = None):
        if max_tokens is None:
            msg = (f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                   f"has {prompt_len} tokens, which leaves no room for a completion.")
        else:
            msg = (f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                   f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the "
                   f"completion). Please reduce the prompt or max_tokens.")
        super().__init__(msg, code="context_length_exceeded", param="messages")
        self.prompt_len = prompt_len
        self.max_model_len = max_model_len
