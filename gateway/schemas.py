"""Wire schemas of the OpenAI chat-completions request, as strict msgspec structs.

The request is decoded once into a plain dict (kept for forwarding, so fields we do not model
still reach OpenAI-compatible upstreams, as the SDK's `extra_body` does) and validated against
these structs, which is where types, ranges and required fields are enforced.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.errors import GatewayError


class _Wire(Struct, kw_only=True, omit_defaults=True):
    pass


class ImageURL(_Wire, kw_only=True):
    url: Annotated[str, Meta(min_length=1)]
    detail: str | None = None


class ContentPart(_Wire, tag_field="type", forbid_unknown_fields=False):
    pass


class TextPart(ContentPart, tag="text", kw_only=True):
    text: str


class ImagePart(ContentPart, tag="image_url", kw_only=True):
    image_url: ImageURL


class InputAudioPart(ContentPart, tag="input_audio", kw_only=True):
    input_audio: dict[str, Any]


class FilePart(ContentPart, tag="file", kw_only=True):
    file: dict[str, Any]


class RefusalPart(ContentPart, tag="refusal", kw_only=True):
    refusal: str


Content = str | list[TextPart | ImagePart | InputAudioPart | FilePart | RefusalPart]


class FunctionCall(_Wire, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    arguments: str


class ToolCall(_Wire, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Wire, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class FunctionDef(_Wire, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Wire, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Wire, kw_only=True):
    name: str


class NamedToolChoice(_Wire, kw_only=True):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Wire, kw_only=True):
    name: str
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Wire, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Wire, kw_only=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


Probability = Annotated[float, Meta(ge=0, le=1)]


class ChatCompletionRequest(_Wire, kw_only=True):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None

    @property
    def output_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def decode_chat_request(raw: bytes) -> tuple[dict[str, Any], ChatCompletionRequest]:
    """Decode and validate; returns the forwarding dict and the typed view. 400 on any mistake."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise GatewayError(400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        request = msgspec.convert(body, ChatCompletionRequest, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        param = None
        if " - at `$." in message:
            message, _, path = message.partition(" - at `$.")
            param = path.rstrip("`")
            message = f"Invalid value for '{param}': {message}"
        raise GatewayError(400, message, param=param, code="invalid_request") from None
    return body, request
