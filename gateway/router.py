"""Public model name + tenant → Plan: the ordered candidates (primary, then fallbacks).

The router only decides; it never calls an upstream. Keeping it pure makes routing decisions
testable and explainable (the plan's targets are echoed in response headers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth import Principal
from gateway.errors import GatewayError
from policies.schema import ModelSpec, Policy, TargetSpec
from providers.base import Provider


@dataclass(slots=True)
class Candidate:
    name: str
    spec: TargetSpec
    provider: Provider


@dataclass(slots=True)
class Plan:
    model: str
    model_spec: ModelSpec
    candidates: list[Candidate]
    reasons: list[str] = field(default_factory=list)

    @property
    def route(self) -> str:
        """Stable name of what serves this request (used in cache keys and telemetry)."""
        return self.model + ">" + ",".join(c.name for c in self.candidates)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


class Router:
    def __init__(self, policy: Policy, providers: dict[str, Provider]) -> None:
        self.policy = policy
        self.providers = providers

    def resolve_model(self, requested: str) -> str:
        if requested == "auto" and self.policy.default_model and "auto" not in self.policy.models:
            return self.policy.default_model
        return requested

    def plan(self, requested_model: str, principal: Principal) -> Plan:
        model = self.resolve_model(requested_model)
        spec = self.policy.models.get(model)
        if spec is None:
            raise model_not_found(requested_model)
        allowed = principal.spec.allowed_models
        if allowed is not None and model not in allowed:
            raise model_not_found(requested_model)
        candidates = [Candidate(name, self.policy.targets[name], self.providers[name]) for name in spec.targets]
        return Plan(model=model, model_spec=spec, candidates=candidates)
