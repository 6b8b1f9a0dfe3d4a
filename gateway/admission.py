"""Hard bounds checked before any spending: a hostile or broken request costs almost nothing.

Decoding (with its own size and depth limits) is the protocol's (`protocols/*`); this step applies
the policy's bounds to the decoded view. Token counts are estimates (the one estimator in
`protocols.text`); they size reservations and reject the absurd, while budgets settle on the
usage the upstream reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from policies.schema import Limits, ModelSpec, TargetSpec
from protocols.errors import GatewayError, bad_request
from protocols.wire import Inbound

CLAMPED_HEADER = "x-gateway-clamped"


def check_body_size(length: int, limits: Limits) -> None:
    if length > limits.max_body_bytes:
        raise GatewayError(
            413,
            f"Request body is {length} bytes; the maximum is {limits.max_body_bytes} bytes.",
            code="request_too_large",
        )


@dataclass(frozen=True, slots=True)
class Admitted:
    """What the request may cost at most: its prompt estimate and its output allowance."""

    prompt_tokens: int
    max_output_tokens: int  # over all choices
    clamp: bool = False  # the model's policy clamps outputs over the allowance instead of refusing

    @property
    def estimate(self) -> int:
        return self.prompt_tokens + self.max_output_tokens


def admit(inbound: Inbound, model: ModelSpec, limits: Limits) -> Admitted:
    """Apply every admission bound; fills in a default output cap when the model has one."""
    if inbound.messages > limits.max_messages:
        raise bad_request(
            f"Too many messages: {inbound.messages}; the maximum is {limits.max_messages}.",
            param="messages",
            code="too_many_messages",
        )
    if inbound.n > limits.max_n:
        raise bad_request(f"n={inbound.n} exceeds the maximum of {limits.max_n}.", param="n", code="invalid_value")
    view = inbound.view
    max_tokens = getattr(view, "max_tokens", None)
    max_completion = getattr(view, "max_completion_tokens", None)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise bad_request(
            "Set either max_tokens or max_completion_tokens, not both with different values.",
            param="max_completion_tokens",
        )
    cap = min(limits.max_tokens, model.max_tokens or limits.max_tokens)
    requested = inbound.output_cap
    clamp = model.output.over == "clamp"
    if requested is not None and requested > cap and clamp:
        requested = cap
    if requested is not None and requested > cap:
        raise bad_request(
            f"{inbound.output_param}={requested} is too large for model '{inbound.model}': the maximum is {cap}.",
            param=inbound.output_param,
            code="invalid_value",
        )
    if inbound.prompt_tokens > limits.max_prompt_tokens:
        raise GatewayError(
            413,
            f"The prompt is about {inbound.prompt_tokens} tokens; the maximum is {limits.max_prompt_tokens}.",
            code="context_length_exceeded",
            param="messages",
        )
    if requested is not None:
        output = requested
    elif inbound.default_output is not None:
        output = min(inbound.default_output, cap)
    else:
        output = model.default_max_tokens or cap
    return Admitted(prompt_tokens=inbound.prompt_tokens, max_output_tokens=output * inbound.n, clamp=clamp)


class _Targeted(Protocol):
    spec: TargetSpec


C = TypeVar("C", bound=_Targeted)


def fitting(candidates: Sequence[C], prompt_tokens: int) -> list[C]:
    """The candidates whose known context window can hold the prompt (unknown windows count as
    fitting). None at all is the caller's 400, naming the largest context available: never a
    retryable 5xx, which agents would resend for minutes."""
    fit = [c for c in candidates if (c.spec.context_limit() or prompt_tokens + 1) > prompt_tokens]
    if fit or not candidates:
        return fit
    largest = max(c.spec.context_limit() or 0 for c in candidates)
    raise GatewayError(
        400,
        f"prompt is too long: about {prompt_tokens} tokens > {largest} maximum (the largest context window "
        f"among this model's targets). Shorten the prompt or use a model with a larger context.",
        code="context_length_exceeded", param="messages",
    )


def output_allowance(inbound: Inbound, admitted: Admitted, target: TargetSpec) -> int | None:
    """With `output.over: clamp`, the output cap this target may be sent when the caller asked
    for more (None: send what the caller asked for)."""
    if not admitted.clamp or inbound.output_cap is None:
        return None
    allowance = admitted.max_output_tokens // max(1, inbound.n)
    if target.max_output_tokens is not None:
        allowance = min(allowance, target.max_output_tokens)
    return allowance if allowance < inbound.output_cap else None


def clamped_body(body: dict[str, Any], inbound: Inbound, allowance: int) -> dict[str, Any]:
    """The upstream body with the caller's output cap (under whichever name it used) lowered."""
    names = {inbound.output_param} | ({"max_tokens", "max_completion_tokens"} & body.keys())
    return {**body, **{name: allowance for name in names}}


def output_cap_to_send(inbound: Inbound, admitted: Admitted, model: ModelSpec) -> int | None:
    """The output cap to write into an upstream body when the caller set none: the model's
    default or limit (so one request cannot run away), else nothing (the protocol's default)."""
    if inbound.output_cap is None and (model.default_max_tokens or model.max_tokens) and inbound.default_output is None:
        return admitted.max_output_tokens
    return None
