"""`hybrid-gateway router report`: its arithmetic on a fixture of recorded decisions, checked by
hand, and the real CLI over an exported file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.routing.model import LearnedModel
from gateway.routing.report import build, render
from policies.loader import parse_policy
from tests.conftest import write_policy

ROOT = Path(__file__).resolve().parent.parent
POLICY = """
version: 2
targets:
  frontier: {provider: openai, model: big, base_url: "http://127.0.0.1:9/v1", pricing: {input: 3.0, output: 15.0}}
  cheap: {provider: openai, model: small, base_url: "http://127.0.0.1:9/v1", pricing: {input: 0.15, output: 0.6}}
models:
  fast: {targets: [cheap]}
default_model: fast
routes:
  - name: auto-hard
    match: {models: [auto], difficulty: {hard: true}}
    targets: [{target: frontier}]
  - name: auto-easy
    match: {models: [auto], difficulty: {hard: false}}
    targets: [{target: cheap}]
"""


@pytest.fixture(scope="module")
def model() -> LearnedModel:
    return LearnedModel.load()


def fixture_rows(model: LearnedModel) -> list[dict]:
    t90, t95, t99 = (model.calibration(hard_recall=r).threshold for r in (0.90, 0.95, 0.99))
    assert t99 < t95 < t90
    learned = f"learned@{model.version}"

    def row(rid, tenant, route, target, prompt, completion, cost, score, scorer=learned, **extra):
        return {"request_id": rid, "tenant": tenant, "route": route, "target": target, "prompt_tokens": prompt,
                "completion_tokens": completion, "cost_usd": cost, "score": score, "scorer": scorer, **extra}

    return [
        row("r1", "acme", "auto-easy", "cheap", 1000, 200, 0.00027, 0.0),
        row("r2", "acme", "auto-easy", "cheap", 2000, 100, 0.00036, (t95 + t90) / 2),
        row("r3", "acme", "auto-hard", "frontier", 1000, 1000, 0.018, 0.9, feedback={"label": "hard"}),
        row("r4", "acme", "auto-easy", "cheap", 500, 500, 0.000375, (t99 + t95) / 2, feedback={"score": 0.8}),
        row("r5", "beta", "auto-easy", None, 0, 0, 0.0, 0.01),  # a cache hit: not answered upstream
        row("r6", "beta", "auto-easy", "cheap", 100, 100, 0.000075, 0.5, scorer="learned@0123456789ab"),
    ]


def test_report_arithmetic_on_a_fixture(model):
    report = build(fixture_rows(model), parse_policy(POLICY), model)
    assert (report["frontier"], report["cheap"], report["not_served"], report["not_rethresholded"]) == \
        ("frontier", "cheap", 1, 1)
    acme = report["tenants"]["acme"]["total"]
    assert (acme["requests"], acme["tokens"]) == (4, 6300)
    assert acme["tiers"]["cheap"] == {"requests": 3, "request_share": 0.75, "tokens": 4300, "token_share": 0.6825}
    assert acme["tiers"]["frontier"] == {"requests": 1, "request_share": 0.25, "tokens": 2000, "token_share": 0.3175}
    # Everything to the frontier at 3 / 15 USD per million: 0.006 + 0.0075 + 0.018 + 0.009.
    assert acme["cost_usd"] == pytest.approx(0.019005) and acme["all_frontier_usd"] == pytest.approx(0.0405)
    assert acme["saved_usd"] == pytest.approx(0.021495) and acme["saved_share"] == pytest.approx(0.5307, abs=1e-4)
    assert (acme["labelled_hard"], acme["labelled_hard_recall"]) == (2, 0.5)
    what_if = acme["hard_recall"]
    assert what_if["0.90"] == {"scored": 4, "frontier_share": 0.25, "cost_usd": pytest.approx(0.019005),
                               "labelled_hard_recall": 0.5}
    assert what_if["0.95"] == {"scored": 4, "frontier_share": 0.5, "cost_usd": pytest.approx(0.026145),
                               "labelled_hard_recall": 0.5}
    assert what_if["0.99"] == {"scored": 4, "frontier_share": 0.75, "cost_usd": pytest.approx(0.03477),
                               "labelled_hard_recall": 1.0}
    easy_route = report["tenants"]["acme"]["routes"]["auto-easy"]
    assert easy_route["requests"] == 3 and easy_route["tiers"] == {
        "cheap": {"requests": 3, "request_share": 1.0, "tokens": 4300, "token_share": 1.0}}
    beta = report["tenants"]["beta"]["total"]
    assert beta["requests"] == 1 and beta["hard_recall"]["0.95"]["scored"] == 0  # another model's scale
    text = render(report)
    assert "acme / all routes: 4 requests, 6300 tokens" in text and "saved $0.0215 (53.1%)" in text
    assert "hard_recall 0.99: frontier share 75.0%" in text


def test_report_cli_over_an_export(tmp_path, model):
    policy = write_policy(tmp_path, POLICY)
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text("\n".join(json.dumps(r) for r in fixture_rows(model)) + "\n")
    cli = [sys.executable, "-m", "gateway.cli", "router", "report", "--policy", str(policy), "--decisions", str(decisions)]
    done = subprocess.run([*cli, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tenants"]["acme"]["total"]["saved_usd"] == pytest.approx(0.021495)
    bad = subprocess.run([*cli, "--frontier", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no target 'nope'" in bad.stderr


def test_cached_tokens_are_priced_as_the_live_savings_metric_prices_them(model):
    from gateway.routing.decisions import decision_row
    from gateway.routing.savings import avoided

    policy = parse_policy(POLICY.replace("pricing: {input: 3.0, output: 15.0}",
                                         "pricing: {input: 3.0, output: 15.0, cached_input: 0.3}"))
    rows = [decision_row(request_id="c1", tenant="acme", difficulty=None, route="auto-easy", target="cheap",
                         prompt_tokens=10_000, completion_tokens=100, cost_usd=0.0004, cached_tokens=8_000),
            # a failover to a pricier target than the frontier's price for it: saved nothing, not less
            decision_row(request_id="c2", tenant="acme", difficulty=None, route="auto-hard", target="frontier",
                         prompt_tokens=1_000, completion_tokens=0, cost_usd=0.01)]
    assert rows[0]["cached_tokens"] == 8_000 and "cached_tokens" not in rows[1]
    total = build(rows, policy, model)["tenants"]["acme"]["total"]
    # by hand: 2,000 uncached at 3.0 + 8,000 cached at 0.3 + 100 out at 15.0 = 0.006 + 0.0024 + 0.0015
    assert total["all_frontier_usd"] == pytest.approx(0.0099 + 0.003)
    top = policy.targets["frontier"].effective_pricing()
    live = sum(avoided(top, r["prompt_tokens"], r["completion_tokens"], r.get("cached_tokens", 0), r["cost_usd"])
               for r in rows)
    assert total["saved_usd"] == pytest.approx(live) == pytest.approx(0.0099 - 0.0004)
