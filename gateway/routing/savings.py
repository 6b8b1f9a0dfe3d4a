"""What routing saves: the cost of a request against sending it to the frontier, at the policy's prices.

The frontier is the strongest target `auto` can route to: the priciest target named by a route
that matches on difficulty (`sticky.strength`), or, with no such route, the priciest target of the
policy. The cheap tier is the cheapest of those same targets. The live metric
(`gateway_routing_saved_usd_total`) and `hybrid-gateway router report` both price with these, so
the dashboard and the report agree.
"""

from __future__ import annotations

from policies.schema import Policy, Pricing
from gateway.routing.sticky import strength


def _routed_targets(policy: Policy) -> list[str]:
    names = [w.target for r in policy.routes if r.match.difficulty is not None for w in r.targets]
    return list(dict.fromkeys(names)) or list(policy.targets)


def frontier_target(policy: Policy) -> str:
    """The target everything would go to without routing."""
    return max(_routed_targets(policy), key=lambda name: strength(policy.targets[name]))


def cheap_target(policy: Policy) -> str:
    """The target easy requests go to (the report's what-if for each hard_recall setting)."""
    return min(_routed_targets(policy), key=lambda name: strength(policy.targets[name]))


def avoided(frontier: Pricing, prompt_tokens: int, completion_tokens: int, cached_tokens: int, cost_usd: float) -> float:
    """USD one answered request did not spend because it was not sent to the frontier (never below
    zero: a request the frontier itself served, or a pricier failover, avoided nothing)."""
    return max(0.0, frontier.cost(prompt_tokens, completion_tokens, cached_tokens) - cost_usd)
