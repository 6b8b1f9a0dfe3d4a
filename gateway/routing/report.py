"""`hybrid-gateway router report`: what routing did and what it saved, from recorded decisions.

Input: the decisions the gateway records for every difficulty-scored request (`decisions.py`;
`GET /admin/router/export?labelled=false` returns them as JSON lines), priced with the policy.
Per tenant and route:

* the share of requests and of tokens (prompt + completion) each tier (target) served;
* what they cost against sending all of them to the frontier (`savings.frontier_target`) at the
  policy's prices (cached prompt tokens at the cached rate), and the share saved: per request
  `savings.avoided`, the same sum the live `gateway_routing_saved_usd_total` counts;
* for each hard_recall setting (0.90 / 0.95 / 0.99), what the frontier share and cost would have
  been: the threshold that setting derives on the model's calibration split, applied to the
  recorded scores (hard to the frontier, the rest to the cheap tier, `savings.cheap_target`);
* where feedback labelled requests hard, how many of them the routing (and each setting) sent to
  the frontier (recall on real traffic).

Only answered requests count (a cache hit or a failure has no target: it is counted apart). A
score from another model version than the policy's is not re-thresholded (its scale differs):
those rows count in what happened, not in the what-ifs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.routing.model import LearnedModel
from gateway.routing.savings import avoided, cheap_target, frontier_target
from policies.schema import Policy, Pricing

RECALLS = (0.90, 0.95, 0.99)


def labelled_hard(row: dict[str, Any]) -> bool | None:
    """The feedback's verdict on a decision (None: no feedback)."""
    feedback = row.get("feedback") or {}
    if feedback.get("label") in ("easy", "hard"):
        return feedback["label"] == "hard"
    if isinstance(feedback.get("score"), (int, float)):
        return float(feedback["score"]) >= 0.5
    return None


@dataclass
class Tally:
    """One group's numbers (a tenant and route, or a tenant's total)."""

    requests: int = 0
    tokens: int = 0
    cost: float = 0.0
    frontier_cost: float = 0.0
    saved: float = 0.0  # per request never below zero, as the live metric counts it
    by_tier: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # requests, tokens
    labelled_hard: int = 0
    hard_to_frontier: int = 0
    # per hard_recall setting: [requests scored by this model, sent to the frontier, cost, labelled hard sent there]
    what_if: dict[float, list[float]] = field(default_factory=lambda: {r: [0, 0, 0.0, 0] for r in RECALLS})

    def as_dict(self, frontier: str) -> dict[str, Any]:
        def share(part: float, whole: float) -> float:
            return round(part / whole, 4) if whole else 0.0

        out: dict[str, Any] = {
            "requests": self.requests, "tokens": self.tokens,
            "tiers": {tier: {"requests": n, "request_share": share(n, self.requests),
                             "tokens": t, "token_share": share(t, self.tokens)}
                      for tier, (n, t) in sorted(self.by_tier.items())},
            "cost_usd": round(self.cost, 6), "all_frontier_usd": round(self.frontier_cost, 6),
            "saved_usd": round(self.saved, 6),
            "saved_share": share(self.saved, self.frontier_cost),
            "frontier": frontier,
        }
        if self.labelled_hard:
            out["labelled_hard"] = self.labelled_hard
            out["labelled_hard_recall"] = share(self.hard_to_frontier, self.labelled_hard)
        out["hard_recall"] = {}
        for recall, (scored, sent, cost, caught) in self.what_if.items():
            entry = {"scored": int(scored), "frontier_share": share(sent, scored), "cost_usd": round(cost, 6)}
            if self.labelled_hard:
                entry["labelled_hard_recall"] = share(caught, self.labelled_hard)
            out["hard_recall"][f"{recall:.2f}"] = entry
        return out


class Thresholds:
    """The threshold each hard_recall setting derives, per scorer kind found in the rows."""

    def __init__(self, model: LearnedModel) -> None:
        self.learned = f"learned@{model.version}"
        self.by_kind: dict[str, dict[float, float]] = {
            self.learned: {r: model.calibration(hard_recall=r).threshold for r in RECALLS}}
        try:
            heuristic = {r: model.calibration(hard_recall=r, heuristic=True).threshold for r in RECALLS}
        except ValueError:  # a model file without the heuristic's calibration scores
            heuristic = {}
        if heuristic:
            self.by_kind["heuristic"] = self.by_kind["heuristic(fallback)"] = heuristic

    def of(self, scorer: str | None) -> dict[float, float] | None:
        return self.by_kind.get(scorer or "heuristic")


def build(rows: Iterable[dict[str, Any]], policy: Policy, model: LearnedModel, *, frontier: str | None = None,
          cheap: str | None = None) -> dict[str, Any]:
    """The report as data: {"frontier", "cheap", "thresholds", "tenants": {tenant: {"total", "routes"}}, ...}."""
    frontier = frontier or frontier_target(policy)
    cheap = cheap or cheap_target(policy)
    top: Pricing = policy.targets[frontier].effective_pricing()
    low: Pricing = policy.targets[cheap].effective_pricing()
    thresholds = Thresholds(model)
    groups: dict[tuple[str, str], Tally] = defaultdict(Tally)
    not_served = other_model = 0
    for row in rows:
        target = row.get("target")
        if not target:
            not_served += 1
            continue
        tenant, route = str(row.get("tenant") or "-"), str(row.get("route") or "-")
        prompt, completion = int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
        cached, cost = int(row.get("cached_tokens") or 0), float(row.get("cost_usd") or 0.0)
        at_frontier = top.cost(prompt, completion, cached)
        saved = avoided(top, prompt, completion, cached, cost)
        verdict = labelled_hard(row)
        cuts = thresholds.of(row.get("scorer")) if isinstance(row.get("score"), (int, float)) else None
        other_model += cuts is None
        for tally in (groups[(tenant, route)], groups[(tenant, "*")]):
            tally.requests += 1
            tally.tokens += prompt + completion
            tally.cost += cost
            tally.frontier_cost += at_frontier
            tally.saved += saved
            tier = tally.by_tier[str(target)]
            tier[0] += 1
            tier[1] += prompt + completion
            if verdict:
                tally.labelled_hard += 1
                tally.hard_to_frontier += target == frontier
            for recall, cut in (cuts or {}).items():
                hard = float(row["score"]) >= cut
                entry = tally.what_if[recall]
                entry[0] += 1
                entry[1] += hard
                entry[2] += at_frontier if hard else low.cost(prompt, completion, cached)
                entry[3] += bool(hard and verdict)
    tenants: dict[str, Any] = {}
    for (tenant, route), tally in sorted(groups.items()):
        into = tenants.setdefault(tenant, {"routes": {}})
        if route == "*":
            into["total"] = tally.as_dict(frontier)
        else:
            into["routes"][route] = tally.as_dict(frontier)
    return {"frontier": frontier, "cheap": cheap, "model": thresholds.learned,
            "thresholds": {f"{r:.2f}": round(cut, 6) for r, cut in thresholds.by_kind[thresholds.learned].items()},
            "not_served": not_served, "not_rethresholded": other_model, "tenants": tenants}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def render(report: dict[str, Any]) -> str:
    """Plain text for a terminal."""
    lines = [f"frontier: {report['frontier']}   cheap tier: {report['cheap']}   scorer: {report['model']}",
             "hard_recall thresholds: " + ", ".join(f"{r} -> {t}" for r, t in report["thresholds"].items())]
    if report["not_served"] or report["not_rethresholded"]:
        lines.append(f"not answered upstream (cache hits, failures): {report['not_served']}; "
                     f"scored by another model (not in the what-ifs): {report['not_rethresholded']}")
    for tenant, data in report["tenants"].items():
        for route, t in [("all routes", data["total"]), *data["routes"].items()]:
            lines.append("")
            lines.append(f"{tenant} / {route}: {t['requests']} requests, {t['tokens']} tokens")
            for tier, n in t["tiers"].items():
                lines.append(f"  {tier:<24} {_pct(n['request_share']):>7} of requests  {_pct(n['token_share']):>7} of tokens")
            lines.append(f"  cost ${t['cost_usd']:.4f}  vs all to {t['frontier']} ${t['all_frontier_usd']:.4f}: "
                         f"saved ${t['saved_usd']:.4f} ({_pct(t['saved_share'])})")
            if "labelled_hard" in t:
                lines.append(f"  labelled hard: {t['labelled_hard']}, sent to the frontier: {_pct(t['labelled_hard_recall'])}")
            for recall, w in t["hard_recall"].items():
                extra = f", labelled-hard recall {_pct(w['labelled_hard_recall'])}" if "labelled_hard_recall" in w else ""
                lines.append(f"  hard_recall {recall}: frontier share {_pct(w['frontier_share'])}, "
                             f"cost ${w['cost_usd']:.4f} ({w['scored']} scored){extra}")
    return "\n".join(lines)


def read_rows(path: str) -> list[dict[str, Any]]:
    """JSON lines (as the export endpoint returns them); blank lines skipped."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
