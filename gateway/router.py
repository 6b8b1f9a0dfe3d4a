"""Request → Plan: the ordered candidates (primary, then fallbacks) and why.

Routes are tried in policy order; the first whose conditions all hold decides. A route picks one
of its weighted targets (canaries), then appends its fallbacks. With no matching route, a public
model's own target list applies (and `auto` means the policy's `default_model`). The router only
decides; it never calls an upstream, which keeps decisions testable and explainable (the route
and difficulty are echoed in response headers).
"""

from __future__ import annotations

import fnmatch
import random
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.routing.features import Conversation
from gateway.routing.savings import frontier_target
from gateway.routing.scorer import Difficulty, DifficultyScorer
from gateway.routing.sticky import Pin, strength
from policies.schema import CacheSpec, ModelSpec, Policy, RetrySpec, RouteMatch, RouteSpec, TargetSpec, TimeoutSpec
from protocols.api import Api
from protocols.translate import Hints
from protocols.turns import Turns, chat_turns
from providers.base import Placeable, Provider
from providers.translated import speaking

AUTO = "auto"
PRIORITY_HEADER = "x-gateway-priority"


@dataclass(slots=True)
class Candidate:
    name: str
    spec: TargetSpec
    provider: Provider
    timeouts: TimeoutSpec
    endpoint: str | None = None  # one replica of a multi-endpoint target

    @property
    def key(self) -> str:
        """Breaker key: per target, and per endpoint for replicas."""
        return f"{self.name}@{self.endpoint}" if self.endpoint else self.name


@dataclass(slots=True)
class Plan:
    model: str
    model_spec: ModelSpec
    candidates: list[Candidate]
    route_name: str | None = None
    difficulty: Difficulty | None = None
    priority: str = "interactive"
    retry: RetrySpec = field(default_factory=RetrySpec)
    cache: CacheSpec = field(default_factory=CacheSpec)
    # Per conversation (gateway/routing/sticky.py): "" (not sticky), "new", "kept", "escalated".
    sticky: str = ""
    thread: str | None = None  # the conversation's sticky key, once the decision is kept
    pin_due: bool = False  # the decision is new (or its pin ages): kept in the background (`Stickiness.served`)

    @property
    def route(self) -> str:
        """Stable name of what serves this request: the cache namespace (not the random pick)."""
        return f"{self.model}>{self.route_name}" if self.route_name else f"{self.model}>" + ",".join(
            c.name for c in self.candidates)


_PLACEABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _placeable(provider: Provider) -> bool:
    """`isinstance(provider, Placeable)`, remembered per provider object (weakly: providers are
    replaced on reload): a runtime-checkable Protocol check costs ~10 us, too much per request."""
    known = _PLACEABLE.get(provider)
    if known is None:
        known = _PLACEABLE[provider] = isinstance(provider, Placeable)
    return known


def unsupported_api(model: str, api: Api) -> GatewayError:
    return GatewayError(
        400,
        f"The model '{model}' cannot serve this endpoint ({api}): none of its targets speaks it and no "
        f"translation exists.",
        code="unsupported_endpoint",
        param="model",
    )


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def _merge_timeouts(base: TimeoutSpec, route: RouteSpec | None) -> TimeoutSpec:
    override = route.timeouts if route is not None else None
    if override is None:
        return base
    return TimeoutSpec(
        connect=override.connect or base.connect,
        first_token=override.first_token or base.first_token,
        total=override.total or base.total,
    )


def build_scorer(policy: Policy) -> DifficultyScorer:
    """The policy's difficulty scorer: learned by default (gateway/routing/learned.py)."""
    from gateway.routing.learned import build_scorer as from_spec

    return from_spec(policy.difficulty)


class Router:
    def __init__(
        self,
        policy: Policy,
        providers: dict[str, Provider],
        *,
        scorer: DifficultyScorer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.providers = providers
        self.scorer = scorer or build_scorer(policy)
        self.rng = rng or random.Random()
        self._difficulty_routes = any(r.match.difficulty is not None for r in policy.routes)
        self._routes = {route.name: route for route in policy.routes}
        # What routing saves is priced against this target (gateway/routing/savings.py).
        self.frontier_pricing = policy.targets[frontier_target(policy)].effective_pricing()
        self._speakers: dict[tuple[str, Api], Provider | None] = {}
        self._aliases: dict[str, str] = {}
        self._patterns: list[tuple[str, str]] = []
        for name, spec in policy.models.items():
            for alias in spec.aliases:
                if any(c in alias for c in "*?["):
                    self._patterns.append((alias, name))
                else:
                    self._aliases.setdefault(alias, name)

    def resolve(self, requested: str) -> str:
        """The public model a caller's name means: itself, an exact alias, or a glob alias."""
        if requested in self.policy.models or requested == AUTO:
            return requested
        if requested in self._aliases:
            return self._aliases[requested]
        for pattern, name in self._patterns:
            if fnmatch.fnmatchcase(requested, pattern):
                return name
        return requested

    @property
    def scores_difficulty(self) -> bool:
        """Whether any route decides on difficulty (then the scorer is warmed at startup)."""
        return self._difficulty_routes

    def public_models(self) -> list[str]:
        names = list(self.policy.models)
        if self.policy.routes or self.policy.default_model:
            names.append(AUTO)
        return names

    def allowed(self, principal: Principal, model: str) -> bool:
        allowed = principal.spec.allowed_models
        if allowed is None or model in allowed:
            return True
        return model == AUTO and self.policy.default_model in allowed

    @staticmethod
    def priority_of(principal: Principal, headers: Mapping[str, str]) -> str:
        asked = (headers.get(PRIORITY_HEADER) or "").lower()
        if asked in ("interactive", "batch"):
            return asked
        return "batch" if principal.spec.tier == "batch" else "interactive"

    async def difficulty(self, turns: Turns, prompt_tokens: int) -> Difficulty:
        """The score of what the user asked last, with the conversation's facts around it (never
        the system prompt or tool schemas: see protocols/turns.py)."""
        return await self.scorer.ascore(turns.ask, Conversation.of(turns, prompt_tokens))  # embeds in a thread

    async def plan(
        self,
        requested: str,
        principal: Principal,
        body: dict[str, Any],
        headers: Mapping[str, str],
        prompt_tokens: int,
        api: Api = Api.CHAT,
        turns: Turns | None = None,
    ) -> Plan:
        """Who should serve this request, in order. Only targets that speak `api` (natively or
        through a translator) become candidates; none at all is the caller's 400. `turns`: what
        the request asks (`protocols.turns.turns_of`); read from the chat-shaped `body` if not given."""
        turns = turns if turns is not None else chat_turns(body)
        plan = await self._plan(self.resolve(requested), principal, body, headers, prompt_tokens, api, turns)
        if not plan.candidates:
            raise unsupported_api(requested, api)
        return plan

    async def _plan(self, requested: str, principal: Principal, body: dict[str, Any], headers: Mapping[str, str],
                    prompt_tokens: int, api: Api, turns: Turns) -> Plan:
        policy = self.policy
        if not self.allowed(principal, requested) or (requested not in policy.models and requested != AUTO):
            raise model_not_found(requested)
        difficulty = None
        if requested == AUTO or self._difficulty_routes:
            difficulty = await self.difficulty(turns, prompt_tokens)
        priority = self.priority_of(principal, headers)
        for route in policy.routes:
            if self._matches(route.match, requested, principal, body, headers, difficulty, prompt_tokens, priority):
                return self._route_plan(route, requested, difficulty, priority, api)
        model = requested if requested != AUTO else policy.default_model
        if model is None:
            raise model_not_found(requested)
        spec = policy.models[model]
        return Plan(
            model=requested if requested != AUTO else model,
            model_spec=spec,
            candidates=self._candidates(spec.targets, None, api),
            difficulty=difficulty,
            priority=priority,
            retry=policy.retry,
            cache=spec.cache,
        )

    def _matches(self, match: RouteMatch, model: str, principal: Principal, body: dict[str, Any],
                 headers: Mapping[str, str], difficulty: Difficulty | None, prompt_tokens: int, priority: str) -> bool:
        if match.models is not None and model not in match.models:
            return False
        if match.tenants is not None and principal.tenant not in match.tenants:
            return False
        if match.tiers is not None and principal.spec.tier not in match.tiers:
            return False
        if match.priority is not None and priority not in match.priority:
            return False
        if match.metadata:
            metadata = body.get("metadata") or {}
            if not isinstance(metadata, dict) or any(metadata.get(k) != v for k, v in match.metadata.items()):
                return False
        if match.headers and any(headers.get(k.lower()) != v for k, v in match.headers.items()):
            return False
        if match.difficulty is not None and (difficulty is None or not match.difficulty.matches(difficulty.score, difficulty.hard)):
            return False
        if match.prompt_tokens is not None and not match.prompt_tokens.contains(prompt_tokens):
            return False
        return True

    def _route_plan(self, route: RouteSpec, requested: str, difficulty: Difficulty | None, priority: str,
                    api: Api, pinned: str | None = None) -> Plan:
        weighted = [w for w in route.targets if w.weight > 0]
        if pinned is None:
            chosen = self.rng.choices(weighted, weights=[w.weight for w in weighted])[0].target
            names = [chosen] + [name for name in route.fallbacks if name != chosen]
        else:  # a conversation's kept target first; the route's own targets stay behind it as fallbacks
            names = list(dict.fromkeys([pinned, *(w.target for w in weighted), *route.fallbacks]))
        model_name = requested if requested != AUTO else self.policy.default_model
        spec = self.policy.models.get(model_name) if model_name else None
        if spec is None:
            spec = ModelSpec(targets=names)
        return Plan(
            model=requested,
            model_spec=spec,
            candidates=self._candidates(dict.fromkeys(names), route, api),
            route_name=route.name,
            difficulty=difficulty,
            priority=priority,
            retry=route.retry or self.policy.retry,
            cache=route.cache or spec.cache,
        )

    # -- per conversation ------------------------------------------------------------------------

    def sticky(self, plan: Plan) -> bool:
        """Whether this plan's decision is kept for the conversation: it came from a route that
        does not turn stickiness off (a model's plain target list decides the same every time)."""
        route = self._routes.get(plan.route_name or "")
        return route is not None and route.sticky and bool(plan.candidates)

    def hold(self, fresh: Plan, pin: Pin | None, tool_loop: bool, api: Api) -> Plan:
        """The plan for one request of a conversation, given what was decided for it before.

        No earlier decision (or one this policy no longer has: the route, or the target among the
        route's weighted targets and fallbacks, drained by a reload): the fresh plan, kept from now on.
        Otherwise the earlier route and target stay, whatever this request's own score says,
        except that a new user turn may escalate: when the fresh plan's first target is stronger
        (priced higher, `sticky.strength`) than the kept one, the fresh plan wins and is kept.
        Inside a tool loop nothing changes (another model cannot continue a model's own tool
        calls or signed thinking); a failover still moves it, because the kept target comes first
        and the route's others stay behind it.
        """
        route = self._routes.get(pin.route) if pin is not None else None
        if pin is None or route is None or not route.sticky or pin.target not in _serving(route):
            fresh.sticky = "new"
            return fresh
        if not tool_loop and strength(fresh.candidates[0].spec) > strength(self.policy.targets[pin.target]):
            fresh.sticky = "escalated"
            return fresh
        kept = self._route_plan(route, fresh.model, fresh.difficulty, fresh.priority, api, pinned=pin.target)
        if not kept.candidates:  # the kept target cannot serve this endpoint: decide afresh
            fresh.sticky = "new"
            return fresh
        kept.sticky = "kept"
        return kept

    def _candidates(self, names, route: RouteSpec | None, api: Api) -> list[Candidate]:
        out = []
        for name in names:
            provider = self._speaker(name, api)
            if provider is not None:
                spec = self.policy.targets[name]
                out.append(Candidate(name, spec, provider, _merge_timeouts(spec.timeouts, route)))
        return out

    def _speaker(self, name: str, api: Api) -> Provider | None:
        """The target's provider as seen by a caller speaking `api` (itself, translated, or None)."""
        key = (name, api)
        if key not in self._speakers:
            spec = self.policy.targets[name]
            # The pipeline sets `prefix_key` only for prefixes over the policy's
            # prompt_cache_min_tokens, so the policy is the one threshold for cache breakpoints.
            hints = Hints(min_cache_chars=0)
            if spec.max_output_tokens:
                hints.default_max_tokens = spec.max_output_tokens
            self._speakers[key] = speaking(self.providers[name], api, hints)
        return self._speakers[key]

    @staticmethod
    def place(plan: Plan, affinity: str | None, tokens: int) -> None:
        """A target with several replicas becomes one candidate per replica, in placement order:
        failover tries another replica of the same target before the next target."""
        placed: list[Candidate] = []
        for candidate in plan.candidates:
            endpoints = candidate.provider.placement(affinity, tokens) if _placeable(candidate.provider) else []
            if len(endpoints) > 1:
                placed.extend(Candidate(candidate.name, candidate.spec, candidate.provider, candidate.timeouts, url)
                              for url in endpoints)
            else:
                placed.append(candidate)
        plan.candidates = placed


def _serving(route: RouteSpec) -> set[str]:
    """The targets a route still sends traffic to: weighted above zero, or a fallback."""
    return {choice.target for choice in route.targets if choice.weight > 0} | set(route.fallbacks)
