"""Hard bounds checked before any spending: a hostile or broken request costs almost nothing.

Token counts here are estimates (about four characters a token, plus per-message framing); they
size reservations and reject the absurd, while budgets settle on the usage the upstream reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, bad_request
from gateway.schemas import ChatCompletionRequest
from policies.schema import Limits, ModelSpec

_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_IMAGE = 768


def check_body_size(length: int, limits: Limits) -> None:
    if length > limits.max_body_bytes:
        raise GatewayError(
            413,
            f"Request body is {length} bytes; the maximum is {limits.max_body_bytes} bytes.",
            code="request_too_large",
        )


def _text_tokens(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return (len(value) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN
    if isinstance(value, list):
        return sum(_part_tokens(part) for part in value)
    if isinstance(value, dict):
        return sum(_text_tokens(v) for v in value.values())
    return (len(str(value)) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN


def _part_tokens(part: Any) -> int:
    if isinstance(part, dict) and part.get("type") == "image_url":
        return _TOKENS_PER_IMAGE
    if isinstance(part, dict) and "text" in part:
        return _text_tokens(part["text"])
    return _text_tokens(part)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Cheap upper-ish estimate of prompt tokens from the raw request dict."""
    total = 3
    for message in body.get("messages") or ():
        total += _TOKENS_PER_MESSAGE
        if isinstance(message, dict):
            total += _text_tokens(message.get("content"))
            for call in message.get("tool_calls") or ():
                total += _text_tokens(call)
    for tool in body.get("tools") or ():
        total += _text_tokens(tool)
    return total


@dataclass(slots=True)
class Admitted:
    prompt_tokens: int
    max_output_tokens: int


def admit(request: ChatCompletionRequest, prompt_tokens: int, model: ModelSpec, limits: Limits) -> Admitted:
    """Apply every admission bound; fills in a default `max_tokens` cap when the model has one."""
    if len(request.messages) > limits.max_messages:
        raise bad_request(
            f"Too many messages: {len(request.messages)}; the maximum is {limits.max_messages}.",
            param="messages",
            code="too_many_messages",
        )
    if request.n is not None and request.n > limits.max_n:
        raise bad_request(f"n={request.n} exceeds the maximum of {limits.max_n}.", param="n", code="invalid_value")
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        if request.max_tokens != request.max_completion_tokens:
            raise bad_request(
                "Set either max_tokens or max_completion_tokens, not both with different values.",
                param="max_completion_tokens",
            )
    cap = min(limits.max_tokens, model.max_tokens or limits.max_tokens)
    requested = request.output_cap
    param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    if requested is not None and requested > cap:
        raise bad_request(
            f"{param}={requested} is too large for model '{request.model}': the maximum is {cap}.",
            param=param,
            code="invalid_value",
        )
    if prompt_tokens > limits.max_prompt_tokens:
        raise GatewayError(
            413,
            f"The prompt is about {prompt_tokens} tokens; the maximum is {limits.max_prompt_tokens}.",
            code="context_length_exceeded",
            param="messages",
        )
    output = requested if requested is not None else (model.default_max_tokens or cap)
    return Admitted(prompt_tokens=prompt_tokens, max_output_tokens=output * (request.n or 1))
