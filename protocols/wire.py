"""What the pipeline needs to know about a protocol, in one small interface.

Each protocol module exposes one `Wire` object. The pipeline never looks inside a body itself: it
asks the wire to decode a request into an `Inbound` view (the forwarding dict, the typed struct,
and the few facts routing, admission, budgets and caching need), to frame and peek at stream
payloads, to read usage, and to replay or assemble cached answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from protocols.api import Api
from protocols.errors import GatewayError
from protocols.usage import Usage

MAX_DEPTH = 64  # JSON nesting beyond this is refused before any recursive walk


@dataclass(slots=True)
class Inbound:
    """A decoded request: the raw dict (forwarded verbatim, unknown fields included), its typed
    view, and protocol-independent facts for the pipeline's steps.

    `conversation` is a chat-shaped dict (`messages`, `tools`) that difficulty scoring, the
    semantic cache and prefix fingerprints read, whatever the caller's protocol.
    """

    api: Api
    body: dict[str, Any]
    view: Any
    model: str
    stream: bool = False
    include_usage: bool = False
    output_cap: int | None = None  # what the caller asked for (None: not set)
    output_param: str = "max_tokens"
    default_output: int | None = None  # the protocol's own default when unset (completions: 16)
    n: int = 1
    messages: int = 0  # count, for the max_messages bound
    prompt_tokens: int = 0  # estimate
    conversation: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Peek:
    """What one stream payload tells the books: reported usage, delivered units, hide it?"""

    usage: Usage | None = None
    delivered: int = 0
    usage_only: bool = False  # a usage-only chunk the caller may not have asked for
    final: bool = False  # the protocol's own end-of-answer event
    valid: bool = True  # False: not this protocol's JSON at all (a garbage upstream)
    # An opening event that carries no answer yet (`response.created`, `message_start`, `ping`):
    # held back with the first real event, so failover stays invisible until the answer starts.
    preamble: bool = False


class Wire(Protocol):
    api: Api
    done: bytes  # the stream's terminator frame (OpenAI `[DONE]`; empty for named-event streams)
    cacheable_streams: bool
    requires_final: bool  # the protocol ends every complete stream with its own final event

    def decode(self, raw: bytes) -> Inbound: ...

    def check(self, body: bytes) -> bool:
        """Whether an upstream's 200 body is this protocol's answer (garbage fails over)."""
        ...

    def prepare(self, inbound: Inbound, upstream_model: str, max_output: int | None) -> dict[str, Any]:
        """The body to forward verbatim: the caller's, with the upstream model (and the admitted
        output cap, when the caller set none) rewritten; streams always ask for usage."""
        ...

    def usage(self, body: bytes) -> Usage: ...

    def peek(self, payload: bytes) -> Peek: ...

    def frame(self, payload: bytes) -> bytes: ...

    def error_frame(self, message: str, type: str, code: str | None) -> bytes: ...

    def replay(self, body: bytes, include_usage: bool) -> list[bytes]: ...

    def assemble(self, payloads: list[bytes]) -> bytes | None: ...


def decode_json(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body, refusing deep nesting before anything walks it recursively."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise GatewayError(400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # cheap test first: only then walk
        check_depth(body)
    return body


def _too_deep() -> GatewayError:
    return GatewayError(400, f"The JSON body is nested more than {MAX_DEPTH} levels deep.", code="invalid_json")


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Iterative (no recursion of our own), so hostile nesting cannot blow the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise _too_deep()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))


def convert(body: dict[str, Any], struct: type) -> Any:
    """Validate a decoded body against a msgspec struct; 400 naming the offending parameter."""
    try:
        return msgspec.convert(body, struct, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        param = None
        if " - at `$." in message:
            message, _, path = message.partition(" - at `$.")
            param = path.rstrip("`")
            message = f"Invalid value for '{param}': {message}"
        raise GatewayError(400, message, param=param, code="invalid_request") from None


def answer_check(field: str):
    """A `check` for answers that carry their content in a required list `field` of a JSON object."""
    struct = msgspec.defstruct(f"_Answer_{field}", [(field, list[msgspec.Raw])])
    decoder = msgspec.json.Decoder(struct)

    def check(body: bytes) -> bool:
        try:
            decoder.decode(body)
        except msgspec.DecodeError:
            return False
        return True

    return check
