"""OpenAI Responses API (`POST /v1/responses`): request validation, stream peeks and framing,
replay of a stored response as the documented event stream, and assembly of a stream into the
final response object.

As for chat, the decoded dict is what is forwarded (verbatim to OpenAI targets: reasoning items,
`encrypted_content`, hosted tools and fields we do not model all reach OpenAI untouched); the
structs only check it. `input` is a string or a list of items whose shapes depend on `type`
(and an easy message has no `type` at all), so items are checked one by one against the struct
their type names; unknown item types pass (OpenAI adds them often; translators refuse them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from protocols import responses_chat, responses_tools
from protocols.api import Api
from protocols.errors import bad_request, error_body
from protocols.responses_events import replay_events
from protocols.sse import named
from protocols.text import estimate_messages_tokens
from protocols.usage import Usage
from protocols.wire import Inbound, Peek, convert, decode_json


class _Wire(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    pass


class InputText(_Wire, tag="input_text", tag_field="type"):
    text: str


class OutputText(_Wire, tag="output_text", tag_field="type"):
    text: str
    annotations: list[Any] = []


class InputImage(_Wire, tag="input_image", tag_field="type"):
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(_Wire, tag="input_file", tag_field="type"):
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


class Refusal(_Wire, tag="refusal", tag_field="type"):
    refusal: str


Content = str | list[InputText | OutputText | InputImage | InputFile | Refusal]


class MessageItem(_Wire):
    role: Annotated[str, Meta(min_length=1)]  # any role reaches an OpenAI target; translators refuse new ones
    content: Content
    type: Literal["message"] = "message"
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Wire):
    type: Literal["function_call"]
    call_id: Annotated[str, Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1)]
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Wire):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Meta(min_length=1)]
    output: str | list[dict[str, Any]]
    id: str | None = None
    status: str | None = None


class ReasoningItem(_Wire):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] = []
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None
    status: str | None = None


class ItemReference(_Wire):
    type: Literal["item_reference"]
    id: Annotated[str, Meta(min_length=1)]


ITEMS: dict[str, type] = {
    "message": MessageItem, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem, "item_reference": ItemReference,
}


class FunctionTool(_Wire):
    type: Literal["function"]
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    parameters: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Wire):
    format: TextFormat | None = None
    verbosity: str | None = None


class NamedTool(_Wire):
    type: str
    name: str | None = None


Probability = Annotated[float, Meta(ge=0, le=1)]


class ResponsesRequest(_Wire):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedTool | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    include: list[str] | None = None
    previous_response_id: Annotated[str, Meta(min_length=1)] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None

    @property
    def stored(self) -> bool:
        return self.store is not False  # OpenAI's default is to store


_MISSING = re.compile(r"missing required field `([^`]+)`")


def _check(value: dict[str, Any], struct: type, where: str) -> None:
    """Validate one element of a list; the 400 names the exact parameter (`input[2].call_id`)."""
    try:
        msgspec.convert(value, struct, strict=True)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$")
        param = where + path.rstrip("`")
        missing = _MISSING.search(message)
        if missing:
            param += "." + missing.group(1)
        raise bad_request(f"Invalid value for '{param}': {message}", param=param) from None


def check_items(items: list[dict[str, Any]]) -> None:
    """Each input item against the struct its `type` names; 400 naming the item that is wrong."""
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad_request(f"input[{number}] must be an object.", param=f"input[{number}]")
        kind = item.get("type", "message" if "role" in item else None)
        struct = ITEMS.get(kind) if isinstance(kind, str) else None
        if struct is None:
            if not isinstance(kind, str) or not kind:
                raise bad_request(f"input[{number}] has no 'type'.", param=f"input[{number}].type")
            continue  # a hosted-tool item (web_search_call, computer_call_output, …): OpenAI's to check
        _check(item, struct, f"input[{number}]")


def check_tools(tools: list[dict[str, Any]]) -> None:
    for number, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str):
            raise bad_request(f"tools[{number}] needs a 'type'.", param=f"tools[{number}].type")
        if kind == "function":
            _check(tool, FunctionTool, f"tools[{number}]")


# -- stream peeks ---------------------------------------------------------------------------------

class _Details(Struct):
    cached_tokens: int | None = None


class _UsagePeek(Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: _Details | None = None


class _ResponsePeek(Struct):
    usage: _UsagePeek | None = None


class _EventPeek(Struct):
    type: str = ""
    response: _ResponsePeek | None = None


_event_decoder = msgspec.json.Decoder(_EventPeek)
_body_decoder = msgspec.json.Decoder(_ResponsePeek)
DELIVERING = frozenset({"response.output_text.delta", "response.function_call_arguments.delta",
                        "response.refusal.delta", "response.reasoning_summary_text.delta",
                        "response.reasoning_text.delta", "response.custom_tool_call_input.delta"})
FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_TYPE_PREFIX = b'{"type":"'


def _usage(peek: _UsagePeek | None) -> Usage | None:
    if peek is None:
        return None
    cached = peek.input_tokens_details.cached_tokens if peek.input_tokens_details else None
    return Usage(peek.input_tokens, peek.output_tokens, cached or 0)


_PREAMBLE = frozenset({"response.created", "response.in_progress"})


def event_type(payload: bytes) -> str:
    """The event's name from its JSON `type` (OpenAI writes `type` first: read it without decoding)."""
    if payload.startswith(_TYPE_PREFIX):
        end = payload.find(b'"', len(_TYPE_PREFIX))
        if end > 0:
            return payload[len(_TYPE_PREFIX):end].decode()
    try:
        return _event_decoder.decode(payload).type or "message"
    except msgspec.DecodeError:
        return "message"


class _AnswerPeek(Struct):
    type: str | None = None
    output: list[msgspec.Raw] | None = None


_answer_decoder = msgspec.json.Decoder(_AnswerPeek)


def check_answer(body: bytes) -> bool:
    """Whether an upstream's 200 answer is a Responses answer: a response object with its `output`
    (non-streamed), or a stream's first event. An `error` or `response.failed` first event is not:
    nothing has reached the caller yet, so the executor fails over instead of relaying it."""
    try:
        answer = _answer_decoder.decode(body)
    except msgspec.DecodeError:
        return False
    if answer.type is None:
        return answer.output is not None
    return answer.type.startswith("response.") and answer.type != "response.failed"


class ResponsesWire:
    api = Api.RESPONSES
    done = b""  # named events; the stream ends after response.completed
    cacheable_streams = True
    requires_final = True  # response.completed / .incomplete / .failed
    check = staticmethod(check_answer)

    def decode(self, raw: bytes) -> Inbound:
        return self.inbound(decode_json(raw))

    def inbound(self, body: dict[str, Any], view: ResponsesRequest | None = None) -> Inbound:
        """The pipeline's view of a body (also of one a Session rebuilt from stored state; `view`
        then keeps what the caller sent, e.g. its previous_response_id)."""
        checked = convert(body, ResponsesRequest)
        if isinstance(checked.input, list):
            check_items(checked.input)
        if checked.tools:
            check_tools(checked.tools)
        if checked.background:
            raise bad_request("background responses are not supported through this gateway.", param="background")
        if checked.conversation is not None:
            raise bad_request("conversation objects are not supported through this gateway; "
                              "use previous_response_id or send the whole input.", param="conversation")
        if checked.input is None and checked.previous_response_id is None and checked.prompt is None:
            raise bad_request("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
        messages = responses_chat.messages_of(body, strict=False)
        tools, _ = responses_tools.build(body, lambda tool: next(iter(responses_chat.tools_of([tool], strict=False)), None))
        conversation: dict[str, Any] = {"messages": messages}
        if tools:
            conversation["tools"] = tools
        if isinstance(body.get("metadata"), dict):  # routes may match on it (`match.metadata`)
            conversation["metadata"] = body["metadata"]
        return Inbound(
            api=self.api, body=body, view=view or checked, model=checked.model, stream=bool(checked.stream),
            include_usage=True,  # a Responses stream always ends with its usage
            output_cap=checked.max_output_tokens, output_param="max_output_tokens",
            messages=len(messages),
            prompt_tokens=estimate_messages_tokens(messages, body.get("tools"), responses_tools.additional_tools(body)),
            conversation=conversation,
        )

    def prepare(self, inbound: Inbound, upstream_model: str, max_output: int | None) -> dict[str, Any]:
        body = dict(inbound.body)
        body["model"] = upstream_model
        if inbound.output_cap is None and max_output is not None:
            body["max_output_tokens"] = max_output
        return body

    def usage(self, body: bytes) -> Usage:
        try:
            return _usage(_body_decoder.decode(body).usage) or Usage()
        except msgspec.DecodeError:
            return Usage()

    def peek(self, payload: bytes) -> Peek:
        kind = event_type(payload)
        if kind in DELIVERING:
            return Peek(delivered=1)
        if kind in _PREAMBLE:
            return Peek(preamble=True)
        if kind == "message":  # no readable `type`: not a Responses event at all
            return Peek(valid=False)
        if kind in FINAL:
            try:
                event = _event_decoder.decode(payload)
            except msgspec.DecodeError:
                return Peek(final=True)
            return Peek(usage=_usage(event.response.usage) if event.response else None, final=True)
        return Peek()

    def frame(self, payload: bytes) -> bytes:
        return named(event_type(payload), payload)

    def error_frame(self, message: str, type: str, code: str | None) -> bytes:
        """OpenAI's `error` event: its documented fields, plus the nested `error` object the
        official SDKs raise from (a stateless wire knows no sequence number: the event is last)."""
        error = msgspec.json.decode(error_body(message, type=type, code=code))["error"]
        event = {"type": "error", "code": code, "message": message, "param": None, "error": error}
        return named("error", msgspec.json.encode(event))

    def replay(self, body: bytes, include_usage: bool) -> list[bytes]:
        encode = msgspec.json.encode
        return [encode(event) for event in replay_events(msgspec.json.decode(body))]

    def assemble(self, payloads: list[bytes]) -> bytes | None:
        """The response object of the stream's `response.completed` or `.incomplete` (None for a
        failed or cut stream)."""
        for payload in reversed(payloads[-4:]):
            if event_type(payload) in ("response.completed", "response.incomplete"):
                try:
                    event = msgspec.json.decode(payload)
                except msgspec.DecodeError:
                    return None
                response = event.get("response") if isinstance(event, Mapping) else None
                return msgspec.json.encode(response) if isinstance(response, dict) else None
        return None


WIRE = ResponsesWire()
