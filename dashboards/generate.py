"""Grafana dashboards (cost, SLO, engine) and Prometheus SLO rules, generated from code.

    python -m dashboards.generate            # rewrite dashboards/grafana/*.json and prometheus/rules.yml
    python -m dashboards.generate --check    # exit 1 if the committed files differ from the generated ones

Dashboards are built with `grafana-foundation-sdk` builders; the rules come from the same SLO
constants, so the objectives on the SLO dashboard and in the alerts cannot drift apart.
Every query uses the names Prometheus actually stores (see `gateway/telemetry.py` for the
gateway's, `selfhost_engine/metrics.py` for the engine's vLLM-named ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parent

# -- SLOs (shared by the SLO dashboard and the alert rules) -----------------------------------


@dataclass(frozen=True)
class SLO:
    name: str  # used in recorded series names: gateway:slo_<name>:error_ratio_rate<window>
    title: str
    objective: float  # fraction of good events
    bad: str  # PromQL: rate of bad events over [{w}]
    total: str  # PromQL: rate of all events over [{w}]
    description: str

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 10)


AVAILABILITY = SLO(
    name="availability",
    title="Availability",
    objective=0.999,
    # 5xx answered by the gateway (upstream failures after every fallback, gateway errors).
    # 4xx (bad input, auth, budgets, rate limits) are the caller's and do not burn the budget.
    bad='sum(rate(gateway_requests_total{status=~"5.."}[{w}])) or vector(0)',
    total="sum(rate(gateway_requests_total[{w}]))",
    description="99.9% of requests answered without a 5xx.",
)
TTFT_THRESHOLD_S = 1.0
TTFT = SLO(
    name="ttft",
    title="Time to first token",
    objective=0.95,
    # Buckets are floats, so the 1 s bound is exported as le="1.0" (and Prometheus 3 normalizes to that).
    bad=("sum(rate(gateway_request_time_to_first_token_seconds_count[{w}]))"
         ' - sum(rate(gateway_request_time_to_first_token_seconds_bucket{le="1.0"}[{w}]))'),
    total="sum(rate(gateway_request_time_to_first_token_seconds_count[{w}]))",
    description="95% of requests get their first token within 1 s.",
)
SLOS = (AVAILABILITY, TTFT)
SLO_PERIOD = "30d"
# Multi-window, multi-burn-rate alerts (Google SRE workbook, ch. 5).
BURN_ALERTS = (
    # (suffix, severity, burn factor, long window, short window, for)
    ("BurnRateFast", "page", 14.4, "1h", "5m", "2m"),
    ("BurnRateSlow", "page", 6.0, "6h", "30m", "15m"),
    ("BudgetBurn", "ticket", 1.0, "3d", "6h", "1h"),
)
WINDOWS = ("5m", "30m", "1h", "6h", "3d", SLO_PERIOD)
DEFAULT_TOKENS_PER_REPLICA = "2500"

# -- panel helpers ------------------------------------------------------------------------------

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")


def q(expr: str, legend: str = "__auto", ref: str = "A") -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def ts(title: str, description: str, queries: list[prom.Dataquery], unit: str = "short", *, w: int = 12,
       h: int = 8, stack: bool = False, percent: bool = False, thresholds: list[tuple[float, str]] | None = None,
       ) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
         .line_width(1).fill_opacity(10).show_points(common.VisibilityMode.NEVER)
         .legend(common_b.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                 .placement(common.LegendPlacement.BOTTOM).show_legend(True)))
    if stack or percent:
        p = p.stacking(common_b.StackingConfig().mode(
            common.StackingMode.PERCENT if percent else common.StackingMode.NORMAL)).fill_opacity(40)
    if thresholds:
        p = (p.thresholds(dash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
            [Threshold(value=None, color="green")] + [Threshold(value=v, color=c) for v, c in thresholds]))
             .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE)))
    for i, query in enumerate(queries):
        p = p.with_target(query.ref_id(chr(ord("A") + i)))
    return p


def st(title: str, description: str, expr: str, unit: str = "short", *, w: int = 6, h: int = 5,
       thresholds: list[tuple[float | None, str]] | None = None, decimals: int | None = None) -> stat.Panel:
    p = (stat.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
         .graph_mode(common.BigValueGraphMode.AREA).color_mode(common.BigValueColorMode.VALUE)
         .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .with_target(q(expr, "__auto")))
    if thresholds:
        p = p.thresholds(dash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE)
                         .steps([Threshold(value=v, color=c) for v, c in thresholds]))
    if decimals is not None:
        p = p.decimals(decimals)
    return p


def datasource_var() -> dash.DatasourceVariable:
    return dash.DatasourceVariable("datasource").label("Data source").type("prometheus")


def query_var(name: str, label: str, query: str) -> dash.QueryVariable:
    return (dash.QueryVariable(name).label(label).datasource(DS).query(query).multi(True).include_all(True)
            .all_value(".*").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))


def base(uid: str, title: str, description: str, tags: list[str]) -> dash.Dashboard:
    return (dash.Dashboard(title).uid(uid).description(description).tags(["hybrid-gateway", *tags])
            .refresh("30s").time("now-6h", "now").timezone("browser").editable()
            .tooltip(DashboardCursorSync.CROSSHAIR).with_variable(datasource_var()))


# Selectors shared by the gateway dashboards.
SEL = 'tenant=~"$tenant", model=~"$model"'
RI = "$__rate_interval"

# -- Cost -------------------------------------------------------------------------------------------


def cost_dashboard() -> dash.Dashboard:
    d = (base("hgw-cost", "Hybrid gateway / Cost",
              "Spend by tenant, model and provider; cost per 1k tokens; managed vs self-hosted; cache savings; budgets.",
              ["cost"])
         .with_variable(query_var("tenant", "Tenant", "label_values(gateway_requests_total, tenant)"))
         .with_variable(query_var("model", "Model", 'label_values(gateway_requests_total{tenant=~"$tenant"}, model)')))
    d = d.with_row(dash.Row("Spend"))
    d = d.with_panel(st("Spend in range", "Total USD over the dashboard's time range.",
                        f"sum(increase(gateway_cost_usd_total{{{SEL}}}[$__range]))", "currencyUSD", decimals=2))
    d = d.with_panel(st("Spend rate", "USD per hour at the current rate.",
                        f"sum(rate(gateway_cost_usd_total{{{SEL}}}[{RI}])) * 3600", "currencyUSD", decimals=2))
    d = d.with_panel(st("Cost per 1k tokens", "USD per 1,000 tokens (input + output), all targets.",
                        f"1000 * sum(rate(gateway_cost_usd_total{{{SEL}}}[{RI}]))"
                        f' / sum(rate(gateway_tokens_total{{{SEL}, type=~"input|output"}}[{RI}]))',
                        "currencyUSD", decimals=4))
    d = d.with_panel(st("Self-hosted token share", "Share of tokens served by self-hosted targets.",
                        f'sum(rate(gateway_tokens_total{{{SEL}, provider="selfhost", type=~"input|output"}}[{RI}]))'
                        f' / sum(rate(gateway_tokens_total{{{SEL}, type=~"input|output"}}[{RI}]))',
                        "percentunit", decimals=1))
    d = d.with_panel(ts("Spend by tenant", "USD per hour, by tenant.",
                        [q(f"sum by (tenant) (rate(gateway_cost_usd_total{{{SEL}}}[{RI}])) * 3600", "{{tenant}}")],
                        "currencyUSD", w=8, stack=True))
    d = d.with_panel(ts("Spend by model", "USD per hour, by public model name.",
                        [q(f"sum by (model) (rate(gateway_cost_usd_total{{{SEL}}}[{RI}])) * 3600", "{{model}}")],
                        "currencyUSD", w=8, stack=True))
    d = d.with_panel(ts("Spend by provider", "USD per hour, by provider (openai, azure, anthropic, selfhost).",
                        [q(f"sum by (provider) (rate(gateway_cost_usd_total{{{SEL}}}[{RI}])) * 3600",
                           "{{provider}}")],
                        "currencyUSD", w=8, stack=True))
    d = d.with_row(dash.Row("Unit cost and mix"))
    d = d.with_panel(ts("Cost per 1k tokens by provider", "USD per 1,000 tokens (input + output) per provider.",
                        [q(f"1000 * sum by (provider) (rate(gateway_cost_usd_total{{{SEL}}}[{RI}]))"
                           f" / sum by (provider) (rate(gateway_tokens_total{{{SEL}, type=~\"input|output\"}}[{RI}]))",
                           "{{provider}}")], "currencyUSD", w=8))
    d = d.with_panel(ts("Cost per 1k tokens by model", "USD per 1,000 tokens (input + output) for each model.",
                        [q(f"1000 * sum by (model) (rate(gateway_cost_usd_total{{{SEL}}}[{RI}]))"
                           f' / sum by (model) (rate(gateway_tokens_total{{{SEL}, type=~"input|output"}}[{RI}]))',
                           "{{model}}")], "currencyUSD", w=8))
    d = d.with_panel(ts("Managed vs self-hosted", "Tokens per second by where they were served.",
                        [q(f'sum(rate(gateway_tokens_total{{{SEL}, provider="selfhost", type=~"input|output"}}[{RI}]))',
                           "self-hosted"),
                         q(f'sum(rate(gateway_tokens_total{{{SEL}, provider!="selfhost", type=~"input|output"}}[{RI}]))',
                           "managed")], "short", w=8, percent=True))
    d = d.with_panel(ts("Tokens by type", "Tokens per second by tenant and type (input, output, cached_input).",
                        [q(f"sum by (tenant, type) (rate(gateway_tokens_total{{{SEL}}}[{RI}]))", "{{tenant}} {{type}}")],
                        "short", w=12))
    d = d.with_panel(ts("Spend by provider class", "USD per hour: managed APIs vs self-hosted GPUs.",
                        [q(f'sum(rate(gateway_cost_usd_total{{{SEL}, provider="selfhost"}}[{RI}])) * 3600',
                           "self-hosted"),
                         q(f'sum(rate(gateway_cost_usd_total{{{SEL}, provider!="selfhost"}}[{RI}])) * 3600',
                           "managed")], "currencyUSD", w=12, stack=True))
    d = d.with_row(dash.Row("Cache savings"))
    d = d.with_panel(ts("Cache savings (USD)", "USD per hour not spent thanks to the response cache.",
                        [q(f"sum by (tenant) (rate(gateway_cache_saved_usd_total{{{SEL}}}[{RI}])) * 3600",
                           "{{tenant}}")], "currencyUSD", w=8, stack=True))
    d = d.with_panel(ts("Cache savings (tokens)", "Tokens per second not sent upstream thanks to the cache.",
                        [q(f"sum by (model) (rate(gateway_cache_saved_tokens_total{{{SEL}}}[{RI}]))", "{{model}}")],
                        "short", w=8, stack=True))
    d = d.with_panel(ts("Cache outcomes", "Response-cache lookups per second by outcome, and the hit ratio.",
                        [q(f"sum by (outcome) (rate(gateway_cache_requests_total{{{SEL}}}[{RI}]))", "{{outcome}}"),
                         q(f'sum(rate(gateway_cache_requests_total{{{SEL}, outcome="hit"}}[{RI}]))'
                           f" / sum(rate(gateway_cache_requests_total{{{SEL}}}[{RI}]))", "hit ratio")],
                        "short", w=8))
    d = d.with_row(dash.Row("Routing savings"))
    d = d.with_panel(st("Routing savings in range",
                        "USD not spent because difficulty routing sent requests to a cheaper tier than the frontier "
                        "(the priciest difficulty-routed target), over the dashboard's time range.",
                        'sum(increase(gateway_routing_saved_usd_total{tenant=~"$tenant"}[$__range]))',
                        "currencyUSD", decimals=2))
    d = d.with_panel(ts("Routing savings by tenant",
                        "USD per hour avoided by difficulty routing, per tenant: what each routed request would have "
                        "cost on the frontier at the policy's prices, minus what it cost "
                        "(`hybrid-gateway router report` breaks it down by route and tier).",
                        [q(f'sum by (tenant) (rate(gateway_routing_saved_usd_total{{tenant=~"$tenant"}}[{RI}])) * 3600',
                           "{{tenant}}")], "currencyUSD", w=18, stack=True))
    d = d.with_row(dash.Row("Budgets"))
    d = d.with_panel(ts("Budget remaining", "What is left in each tenant's budget window (burn-down).",
                        [q('gateway_budget_remaining{tenant=~"$tenant"}', "{{tenant}} {{window}}")],
                        "short", w=12))
    d = d.with_panel(ts("Budget burn rate", "How fast each window is being consumed (units per hour).",
                        [q(f'-deriv(gateway_budget_remaining{{tenant=~"$tenant"}}[{RI}]) * 3600',
                           "{{tenant}} {{window}}")], "short", w=12))
    return d


# -- SLO ----------------------------------------------------------------------------------------------


def _ratio(slo: SLO, w: str) -> str:
    return f"gateway:slo_{slo.name}:error_ratio_rate{w}"


def slo_dashboard() -> dash.Dashboard:
    d = (base("hgw-slo", "Hybrid gateway / SLO",
              "Availability and time-to-first-token SLOs, error budgets and burn rates; latency and errors.",
              ["slo"])
         .with_variable(query_var("model", "Model", "label_values(gateway_requests_total, model)")))
    sel = 'model=~"$model"'
    for slo in SLOS:
        d = d.with_row(dash.Row(f"SLO: {slo.title} ({slo.description})"))
        d = d.with_panel(st(f"{slo.title}: good ratio ({SLO_PERIOD})", f"Objective {slo.objective:.1%}. "
                            f"{slo.description}", f"1 - {_ratio(slo, SLO_PERIOD)}", "percentunit", decimals=3,
                            thresholds=[(None, "red"), (slo.objective, "green")]))
        d = d.with_panel(st(f"{slo.title}: error budget remaining", f"Share of the {SLO_PERIOD} error budget "
                            f"({slo.budget:g} of events) not yet spent.",
                            f"1 - {_ratio(slo, SLO_PERIOD)} / {slo.budget}", "percentunit", decimals=1,
                            thresholds=[(None, "red"), (0.25, "orange"), (0.5, "green")]))
        d = d.with_panel(ts(f"{slo.title}: burn rate", "Error ratio divided by the error budget, per alert window. "
                            "Pages at 14.4x (1h and 5m) or 6x (6h and 30m); tickets at 1x (3d and 6h).",
                            [q(f"{_ratio(slo, w)} / {slo.budget}", w, chr(ord('A') + i))
                             for i, w in enumerate(("5m", "30m", "1h", "6h", "3d"))],
                            "x", w=12, thresholds=[(1.0, "yellow"), (6.0, "orange"), (14.4, "red")]))
    d = d.with_row(dash.Row("Latency"))
    d = d.with_panel(ts("Time to first token p50 / p95", "From the gateway's TTFT histogram (streamed requests).",
                        [q(f"histogram_quantile({p}, sum by (le) (rate("
                           f"gateway_request_time_to_first_token_seconds_bucket{{{sel}}}[{RI}])))", f"p{int(p * 100)}")
                         for p in (0.5, 0.95)], "s", w=8, thresholds=[(TTFT_THRESHOLD_S, "red")]))
    d = d.with_panel(ts("Latency p95 / p99", "End-to-end request duration at the gateway.",
                        [q(f"histogram_quantile({p}, sum by (le) (rate(gateway_request_duration_seconds_bucket"
                           f"{{{sel}}}[{RI}])))", f"p{int(p * 100)}") for p in (0.95, 0.99)], "s", w=8))
    d = d.with_panel(ts("Latency p95 by model", "End-to-end request duration p95 per model.",
                        [q(f"histogram_quantile(0.95, sum by (le, model) (rate(gateway_request_duration_seconds_bucket"
                           f"{{{sel}}}[{RI}])))", "{{model}}")], "s", w=8))
    d = d.with_panel(ts("Queue time p95", "Time in auth, admission, budgets and cache before the first upstream "
                        "attempt.", [q(f"histogram_quantile(0.95, sum by (le) (rate("
                                       f"gateway_request_queue_time_seconds_bucket{{{sel}}}[{RI}])))", "p95")],
                        "s", w=8))
    d = d.with_panel(ts("Upstream attempt p95 by target", "Duration of single upstream attempts.",
                        [q(f"histogram_quantile(0.95, sum by (le, target) (rate("
                           f"gateway_attempt_duration_seconds_bucket[{RI}])))", "{{target}}")], "s", w=8))
    d = d.with_panel(ts("GenAI operation duration p95", "gen_ai.client.operation.duration by provider.",
                        [q(f"histogram_quantile(0.95, sum by (le, gen_ai_provider_name) (rate("
                           f'gen_ai_client_operation_duration_seconds_bucket{{gen_ai_request_model=~"$model"}}[{RI}])))',
                           "{{gen_ai_provider_name}}")], "s", w=8))
    d = d.with_row(dash.Row("Traffic and errors"))
    d = d.with_panel(ts("Requests by status", "Requests per second by HTTP status.",
                        [q(f"sum by (status) (rate(gateway_requests_total{{{sel}}}[{RI}]))", "{{status}}")],
                        "reqps", w=8, stack=True))
    d = d.with_panel(ts("Error rate by type", "Failed requests per second by error type.",
                        [q(f"sum by (type) (rate(gateway_errors_total{{{sel}}}[{RI}]))", "{{type}}")],
                        "reqps", w=8, stack=True))
    d = d.with_panel(ts("Rejections by reason", "Requests refused before reaching an upstream.",
                        [q(f"sum by (reason) (rate(gateway_rejections_total[{RI}]))", "{{reason}}")],
                        "reqps", w=8, stack=True))
    d = d.with_panel(ts("Attempts by target and outcome", "Upstream attempts per second.",
                        [q(f"sum by (target, outcome) (rate(gateway_attempts_total[{RI}]))", "{{target}} {{outcome}}")],
                        "reqps", w=8))
    d = d.with_panel(ts("Failovers", "Failovers per second from one target to the next.",
                        [q(f"sum by (from_target, to_target) (rate(gateway_failovers_total[{RI}]))",
                           "{{from_target}} → {{to_target}}")], "reqps", w=8))
    d = d.with_panel(ts("Breaker state", "0 closed, 1 half-open, 2 open.",
                        [q("max by (target) (gateway_breaker_state)", "{{target}}")], "short", w=8,
                        thresholds=[(1.0, "orange"), (2.0, "red")]))
    d = d.with_panel(ts("Policy reloads", "Policy reloads in the window, by result.",
                        [q(f"sum by (result) (increase(gateway_policy_reloads_total[{RI}]))", "{{result}}")],
                        "short", w=24, h=6))
    return d


# -- Engine -------------------------------------------------------------------------------------------


def engine_dashboard() -> dash.Dashboard:
    d = (base("hgw-engine", "Hybrid gateway / Self-hosted engine",
              "The bundled engine (or any vLLM server): queue, batch, KV cache, prefix cache, throughput, "
              "preemptions, and replicas needed for the current token demand.", ["engine", "vllm"])
         .with_variable(query_var("model_name", "Model", "label_values(vllm:num_requests_running, model_name)"))
         .with_variable(query_var("instance", "Instance",
                                  'label_values(vllm:num_requests_running{model_name=~"$model_name"}, instance)'))
         .with_variable(dash.TextBoxVariable("tokens_per_replica").label("Tokens/s per replica")
                        .description("Sustainable tokens/s (prompt + generated) of one replica at the target "
                                     "latency; measure it with bench/engine_throughput.py.")
                        .default_value(DEFAULT_TOKENS_PER_REPLICA)))
    sel = 'model_name=~"$model_name", instance=~"$instance"'
    tokens = (f"sum(rate(vllm:prompt_tokens_total{{{sel}}}[{RI}]))"
              f" + sum(rate(vllm:generation_tokens_total{{{sel}}}[{RI}]))")
    d = d.with_row(dash.Row("Capacity"))
    d = d.with_panel(st("Replicas needed", "ceil(token demand / tokens per replica), from the engines' "
                        "prompt + generated tokens per second.", f"ceil(({tokens}) / $tokens_per_replica)", w=6))
    d = d.with_panel(st("Replicas up", "Engines reporting metrics.",
                        f"count(vllm:num_requests_running{{{sel}}})", w=6))
    d = d.with_panel(ts("Token demand vs capacity", "Tokens/s the engines handle, the self-hosted share of the "
                        "gateway's traffic, and the capacity of the running replicas.",
                        [q(tokens, "engine tokens/s"),
                         q(f'sum(rate(gateway_tokens_total{{provider="selfhost", type=~"input|output"}}[{RI}]))',
                           "gateway → self-hosted tokens/s"),
                         q(f"count(vllm:num_requests_running{{{sel}}}) * $tokens_per_replica", "capacity")],
                        "short", w=12, h=5))
    d = d.with_row(dash.Row("Queue and batch"))
    d = d.with_panel(ts("Queue depth", "Requests waiting to be scheduled.",
                        [q(f"sum by (instance) (vllm:num_requests_waiting{{{sel}}})", "{{instance}}")], w=8))
    d = d.with_panel(ts("Queue age", "Age of the oldest waiting request, and p95 time from arrival to scheduling.",
                        [q(f"max by (instance) (selfhost:queue_oldest_age_seconds{{{sel}}})", "oldest {{instance}}"),
                         q(f"histogram_quantile(0.95, sum by (le) (rate(vllm:request_queue_time_seconds_bucket"
                           f"{{{sel}}}[{RI}])))", "p95 queue time")], "s", w=8))
    d = d.with_panel(ts("Running sequences", "Requests in the running batch.",
                        [q(f"sum by (instance) (vllm:num_requests_running{{{sel}}})", "{{instance}}")], w=8))
    d = d.with_row(dash.Row("KV cache"))
    d = d.with_panel(ts("KV cache usage", "Share of KV blocks in use.",
                        [q(f"max by (instance) (vllm:kv_cache_usage_perc{{{sel}}})", "{{instance}}")],
                        "percentunit", w=8, thresholds=[(0.9, "orange"), (0.98, "red")]))
    d = d.with_panel(ts("Prefix cache hit rate", "Prompt tokens served from the prefix cache / tokens looked up.",
                        [q(f"sum(rate(vllm:prefix_cache_hits_total{{{sel}}}[{RI}]))"
                           f" / sum(rate(vllm:prefix_cache_queries_total{{{sel}}}[{RI}]))", "hit rate")],
                        "percentunit", w=8))
    d = d.with_panel(ts("Preemptions", "Sequences preempted (recomputed) per second: KV pressure.",
                        [q(f"sum by (instance) (rate(vllm:num_preemptions_total{{{sel}}}[{RI}]))", "{{instance}}")],
                        "short", w=8))
    d = d.with_row(dash.Row("Throughput and latency"))
    d = d.with_panel(ts("Tokens/s", "Prompt (prefill) and generated (decode) tokens per second.",
                        [q(f"sum(rate(vllm:prompt_tokens_total{{{sel}}}[{RI}]))", "prompt"),
                         q(f"sum(rate(vllm:generation_tokens_total{{{sel}}}[{RI}]))", "generation")],
                        "short", w=12, stack=True))
    d = d.with_panel(ts("Engine TTFT / TPOT p95", "Engine-side time to first token and time per output token.",
                        [q(f"histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket"
                           f"{{{sel}}}[{RI}])))", "TTFT p95"),
                         q(f"histogram_quantile(0.95, sum by (le) (rate(vllm:time_per_output_token_seconds_bucket"
                           f"{{{sel}}}[{RI}])))", "TPOT p95"),
                         q(f"histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket"
                           f"{{{sel}}}[{RI}])))", "e2e p95")], "s", w=12))
    return d


DASHBOARDS = {"cost": cost_dashboard, "slo": slo_dashboard, "engine": engine_dashboard}

# -- Prometheus rules ---------------------------------------------------------------------------------


def rules() -> dict:
    recording = []
    for slo in SLOS:
        for w in WINDOWS:
            recording.append({
                "record": _ratio(slo, w),
                "expr": f"({slo.bad.replace('[{w}]', f'[{w}]')})\n/\n({slo.total.replace('[{w}]', f'[{w}]')})",
            })
    helpers = [
        {"record": "gateway:requests:rate5m",
         "expr": "sum by (tenant, model, target, provider, status) (rate(gateway_requests_total[5m]))"},
        {"record": "gateway:cost_usd:rate1h",
         "expr": "sum by (tenant, model, provider) (rate(gateway_cost_usd_total[1h]))"},
        {"record": "gateway:ttft_seconds:p95_5m",
         "expr": "histogram_quantile(0.95, sum by (le, model) "
                 "(rate(gateway_request_time_to_first_token_seconds_bucket[5m])))"},
        {"record": "gateway:request_duration_seconds:p99_5m",
         "expr": "histogram_quantile(0.99, sum by (le, model) (rate(gateway_request_duration_seconds_bucket[5m])))"},
        {"record": "selfhost:tokens_per_second:rate5m",
         "expr": "sum by (model_name) (rate(vllm:prompt_tokens_total[5m]))"
                 " + sum by (model_name) (rate(vllm:generation_tokens_total[5m]))"},
    ]
    alerts = []
    for slo in SLOS:
        label = "Availability" if slo is AVAILABILITY else "TTFT"
        for suffix, severity, factor, long_w, short_w, for_ in BURN_ALERTS:
            threshold = f"({factor} * {slo.budget})"
            alerts.append({
                "alert": f"Gateway{label}{suffix}",
                "expr": f"{_ratio(slo, long_w)} > {threshold}\nand\n{_ratio(slo, short_w)} > {threshold}",
                "for": for_,
                "labels": {"severity": severity, "slo": slo.name},
                "annotations": {
                    "summary": f"{slo.title} SLO: error budget burning at {factor:g}x or faster",
                    "description": (f"{slo.description} The error ratio over {long_w} and over {short_w} is above "
                                    f"{factor:g} x {slo.budget:g}: at this pace the {SLO_PERIOD} budget lasts "
                                    f"{_lasts(factor)}. Value (over {long_w}): {{{{ $value | humanizePercentage }}}}."),
                    "dashboard": "/d/hgw-slo",
                },
            })
    return {"groups": [
        {"name": "gateway-slo-recording", "rules": recording},
        {"name": "gateway-recording", "rules": helpers},
        {"name": "gateway-slo-alerts", "rules": alerts},
    ]}


def _lasts(factor: float) -> str:
    days = 30 / factor
    return f"{days:.1f} days" if days >= 2 else f"{days * 24:.0f} hours"


# -- rendering ----------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str)


def render() -> dict[str, str]:
    """Relative path -> file content, for every generated file."""
    out = {}
    for name, build in DASHBOARDS.items():
        model = build().build()
        out[f"grafana/{name}.json"] = json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        # the Kustomize base mounts the same dashboards as ConfigMaps (deploy/): one source, two copies
        out[f"../deploy/kubernetes/base/dashboards/{name}.json"] = out[f"grafana/{name}.json"]
    out["prometheus/rules.yml"] = (
        "# Generated by `python -m dashboards.generate`: edit dashboards/generate.py, not this file.\n"
        + yaml.dump(rules(), Dumper=_Dumper, sort_keys=False, width=120))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="fail if the committed files are out of date")
    a = p.parse_args(argv)
    stale = []
    for rel, text in render().items():
        path = ROOT / rel
        if path.exists() and path.read_text() == text:
            continue
        stale.append(rel)
        if not a.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if a.check and stale:
        print("out of date: " + ", ".join(stale) + " (run python -m dashboards.generate)", file=sys.stderr)
        return 1
    for rel in stale:
        print(f"wrote dashboards/{rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
