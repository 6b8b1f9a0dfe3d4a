"""Dashboards and rules: generated == committed, valid for the SDK and promtool, and every panel
query and rule expression returns data from a real Prometheus scraping a real gateway and engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dashboards import generate
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.prometheus_proc import PrometheusProcess, prometheus_binary, promtool_binary
from tests.stubs.openai_stub import OpenAIStub, StubControl, free_port

ROOT = Path(__file__).resolve().parent.parent
DASH = ROOT / "dashboards"
RULES = DASH / "prometheus" / "rules.yml"
DASHBOARD_FILES = sorted((DASH / "grafana").glob("*.json"))

# What the e2e test substitutes for Grafana's variables.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$tokens_per_replica": generate.DEFAULT_TOKENS_PER_REPLICA,
    "$tenant": ".*",
    "$model_name": ".*",
    "$model": ".*",
    "$instance": ".*",
}


def panels(board: dict) -> list[dict]:
    out = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels") or [])
        else:
            out.append(panel)
    return out


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) for every query of every panel."""
    found = []
    for path in DASHBOARD_FILES:
        board = json.loads(path.read_text())
        for panel in panels(board):
            for target in panel.get("targets", []):
                found.append((path.stem, panel["title"], target["expr"]))
    return found


def variable_queries() -> list[tuple[str, str, str]]:
    """Query variables as PromQL: label_values(sel, label) -> group by (label) (sel)."""
    found = []
    for path in DASHBOARD_FILES:
        board = json.loads(path.read_text())
        for var in board["templating"].get("list", []):
            if var.get("type") != "query":
                continue
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"])
            assert m, var["query"]
            found.append((path.stem, f"${var['name']}", f"group by ({m.group(2)}) ({m.group(1)})"))
    return found


def rule_exprs() -> list[dict]:
    import yaml

    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def substitute(expr: str) -> str:
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


# -- static checks ------------------------------------------------------------------------------


def test_committed_files_equal_generated():
    rendered = generate.render()
    boards = ["cost", "slo", "engine"]
    assert sorted(rendered) == sorted([f"grafana/{b}.json" for b in boards] + ["prometheus/rules.yml"]
                                      + [f"../deploy/kubernetes/base/dashboards/{b}.json" for b in boards])
    for rel, text in rendered.items():
        path = DASH / rel
        assert path.exists(), f"{rel} missing: run python -m dashboards.generate"
        assert path.read_text() == text, f"{rel} is stale: run python -m dashboards.generate"
    assert subprocess.run([sys.executable, "-m", "dashboards.generate", "--check"], cwd=ROOT).returncode == 0


def test_dashboards_round_trip_through_the_sdk_models():
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard
    from grafana_foundation_sdk.models.prometheus import Dataquery

    register_default_plugins()
    assert len(DASHBOARD_FILES) == 3
    for path in DASHBOARD_FILES:
        data = json.loads(path.read_text())
        model = Dashboard.from_json(data)
        assert json.loads(json.dumps(model, cls=JSONEncoder)) == data, path.name
        # Queries decode as the SDK's Prometheus dataquery type (not an unknown bag).
        queries = [t for p in model.panels for t in (getattr(p, "targets", None) or [])] + [
            t for p in model.panels if getattr(p, "panels", None) for q in p.panels for t in (q.targets or [])]
        assert queries and all(isinstance(t, Dataquery) for t in queries), path.name
        assert model.uid and model.title


def test_every_panel_has_a_prometheus_query_and_datasource():
    for path in DASHBOARD_FILES:
        board = json.loads(path.read_text())
        assert panels(board), path.name
        for panel in panels(board):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel.get("targets"), f"{path.name}: {panel['title']} has no query"
            assert panel["gridPos"]["w"] > 0 and panel["gridPos"]["h"] > 0
            for target in panel["targets"]:
                assert target["expr"].strip() and target["refId"]


@pytest.mark.skipif(promtool_binary() is None, reason="promtool not installed (apt-get install -y prometheus)")
def test_promtool_checks_rules_and_example_config():
    promtool = promtool_binary()
    rules = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in rules.stdout
    config = subprocess.run([promtool, "check", "config", str(DASH / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr


def test_burn_rate_alerts_follow_the_multiwindow_scheme():
    alerts = {r["alert"]: r for r in rule_exprs() if "alert" in r}
    expected = {
        "BurnRateFast": ("page", "1h", "5m", 14.4),
        "BurnRateSlow": ("page", "6h", "30m", 6.0),
        "BudgetBurn": ("ticket", "3d", "6h", 1.0),
    }
    for slo, budget in (("Availability", 0.001), ("TTFT", 0.05)):
        for suffix, (severity, long_w, short_w, factor) in expected.items():
            rule = alerts[f"Gateway{slo}{suffix}"]
            assert rule["labels"]["severity"] == severity
            expr = " ".join(rule["expr"].split())
            assert f"error_ratio_rate{long_w} > ({factor} * {budget})" in expr, expr
            assert f"and gateway:slo_{slo.lower()}:error_ratio_rate{short_w} > ({factor} * {budget})" in expr


def _known_metric_names() -> set[str]:
    from gateway.telemetry import RequestRecord, Telemetry

    tel = Telemetry(otlp_endpoint="")
    tel.request_done(RequestRecord("t", "m", "x", "openai", True, 500, "E", 1.0, 0.5, 0.1, 1, 1, 1, 1.0, "hit", 1))
    tel.rejected("auth", None, None)
    tel.attempt("x", "openai", None, 0.1)
    tel.failover("x", "y")
    tel.breaker_state("x", "open")
    tel.budget_remaining("t", "w", 1.0)
    tel.cache_event("t", "m", "hit", 1, 1.0)
    tel.routing_saved("t", "r", 1.0)
    names = {line.split("{")[0].split(" ")[0] for line in tel.metrics_text()[0].decode().splitlines()
             if line and not line.startswith("#")}
    tel.shutdown()
    engine_src = (ROOT / "selfhost_engine" / "metrics.py").read_text()
    for kind, name in re.findall(r'\b(gauge|counter|Histogram)\(\s*"([a-z0-9_:]+)"', engine_src):
        if kind == "counter":
            names.add(name + "_total")
        elif kind == "Histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
        else:
            names.add(name)
    return names


def test_queries_use_only_metric_names_that_exist():
    """A cheap guard (no Prometheus needed): every metric a query names is one the gateway or the
    engine actually exposes, or a recorded series from rules.yml."""
    known = _known_metric_names() | {r["record"] for r in rule_exprs() if "record" in r}
    assert "vllm:num_requests_waiting" in known and "gateway_cost_usd_total" in known
    exprs = [e for _, _, e in panel_queries()] + [r["expr"] for r in rule_exprs()] + [e for *_, e in variable_queries()]
    functions = {"sum", "rate", "increase", "histogram_quantile", "by", "on", "and", "or", "vector", "max", "count",
                 "ceil", "deriv", "group", "le", "without", "ignoring"}
    for expr in exprs:
        stripped = re.sub(r'"[^"]*"', '""', expr)  # drop label values
        stripped = re.sub(r"\{[^}]*\}", "", stripped)  # and matchers
        stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # and ranges
        stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", "", stripped)
        for ident in re.findall(r"\$?[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
            if ident in functions or ident.startswith("$"):
                continue
            assert ident in known, f"unknown metric {ident!r} in {expr!r}"


# -- end to end ------------------------------------------------------------------------------------


def _engine(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "selfhost_engine", "serve", "--model", str(model_dir), "--port", str(port),
         "--threads", "1", "--max-model-len", "256", "--served-model-name", "tiny", "--num-blocks", "128",
         "--block-size", "8"],
        env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


E2E_POLICY = """
    targets:
      managed:
        provider: openai
        model: gpt-4o-mini
        base_url: {stub}
        api_key_env: STUB_OPENAI_KEY
        pricing: {{input: 0.15, cached_input: 0.075, output: 0.6}}
        timeouts: {{connect: 2, first_token: 5, total: 10}}
      local:
        provider: selfhost
        model: tiny
        base_url: {engine}
        gpu_hourly_usd: 2.0
        tokens_per_second: 500
        timeouts: {{connect: 2, first_token: 20, total: 30}}
        autoscale: {{min_replicas: 1, max_replicas: 4, sample_seconds: 1}}
    models:
      gpt-test:
        targets: [managed, local]
        max_tokens: 16
      local-test:
        targets: [local]
        max_tokens: 16
      managed-only:
        targets: [managed]
        max_tokens: 16
    default_model: local-test
    routes:
      - name: auto-hard
        match: {{models: [auto], difficulty: {{hard: true}}}}
        targets: [{{target: local}}]
        fallbacks: [managed]
      - name: auto-easy
        match: {{models: [auto], difficulty: {{hard: false}}}}
        targets: [{{target: managed}}]
        fallbacks: [local]
    tenants:
      acme:
        keys: [{acme_hash}]
        limits: {{requests_per_minute: 6, usd_per_month: 50, tokens_per_day: 100000}}
"""


def _load(base: str, dev_key: str, acme_key: str, control: StubControl) -> dict[int, int]:
    """~55 requests: managed and self-hosted, streamed and not, cache hits, rejections, failures."""
    statuses: dict[int, int] = {}
    client = httpx.Client(base_url=base, timeout=60)

    def chat(model: str, text: str, *, key: str = dev_key, stream: bool = False, temperature: float | None = 0,
             max_tokens: int = 6) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
        if temperature is not None:
            body["temperature"] = temperature
        headers = {"authorization": f"Bearer {key}"}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            with client.stream("POST", "/chat/completions", json=body, headers=headers) as r:
                r.read()
                status = r.status_code
        else:
            status = client.post("/chat/completions", json=body, headers=headers).status_code
        statuses[status] = statuses.get(status, 0) + 1
        return status

    def run(jobs, workers: int = 3) -> None:
        jobs = list(jobs)
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    if not jobs:
                        return
                    job = jobs.pop(0)
                job()

        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # Managed, non-streamed, repeated prompts at temperature 0: misses then cache hits.
    run([lambda i=i: chat("gpt-test", f"what is {i % 3} plus one") for i in range(9)])
    # Managed, streamed (TTFT), sampled so never cached.
    run([lambda i=i: chat("gpt-test", f"stream me {i}", stream=True, temperature=0.7) for i in range(8)])
    # Self-hosted, half streamed.
    run([lambda i=i: chat("local-test", f"local prompt {i}", stream=i % 2 == 0, temperature=0.7)
         for i in range(8)], workers=4)
    # Tenant with budgets: successes, then over the request-per-minute budget (429).
    run([lambda i=i: chat("gpt-test", f"acme asks {i}", key=acme_key, temperature=0.5) for i in range(8)], workers=1)
    # Rejections: bad key, unknown model.
    run([lambda: chat("gpt-test", "who am i", key="sk-wrong")] * 2 + [lambda: chat("nope-model", "hi")] * 2)
    # Upstream failures: managed fails over to self-hosted; managed-only fails outright (5xx).
    control.fail_always(status=503, message="upstream down")
    run([lambda i=i: chat("gpt-test", f"fail over {i}", stream=i % 2 == 1, temperature=0.7) for i in range(6)])
    run([lambda i=i: chat("managed-only", f"no fallback {i}", stream=i % 2 == 1, temperature=0.7)
         for i in range(8)])
    control.recover()
    # Back to normal.
    run([lambda i=i: chat("gpt-test", f"recovered {i}", stream=True, temperature=0.7) for i in range(4)])
    # `auto`: easy asks routed to the cheaper target (the routing-savings panel); the frontier here is
    # `local`, the pricier one at these test prices.
    run([lambda i=i: chat("auto", f"hi there {i}", temperature=0.7) for i in range(4)])
    client.close()
    return statuses


@pytest.mark.skipif(prometheus_binary() is None, reason="prometheus binary not installed (apt-get install -y prometheus)")
@pytest.mark.timeout(180)
def test_every_panel_and_rule_returns_data_from_a_real_prometheus(tmp_path):
    from gateway.auth import hash_key

    started = time.monotonic()
    model_dir = tmp_path / "model"
    build = subprocess.Popen([sys.executable, "-m", "selfhost_engine", "make-tiny-model", str(model_dir),
                              "--layers", "1"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    engine_port = free_port()
    acme_key = "sk-gw-acme-e2e"
    engine = None
    with OpenAIStub(StubControl(api_key="sk-upstream")) as stub:
        policy = write_policy(tmp_path, E2E_POLICY.format(stub=stub.base_url, engine=f"http://127.0.0.1:{engine_port}/v1",
                                                          acme_hash=hash_key(acme_key)))
        gateway = GatewayProcess(policy)  # starts while the model is being built
        try:
            out, _ = build.communicate(timeout=120)
            assert build.returncode == 0, out.decode(errors="replace")[-3000:]
            engine_log = tmp_path / "engine.log"
            engine = _engine(model_dir, engine_port, engine_log)
            gateway.wait_ready(60)
            metrics = httpx.get(gateway.root_url + "/metrics", timeout=5)
            assert metrics.status_code == 200, (
                f"gateway has no /metrics yet (status {metrics.status_code}): wire Telemetry.metrics_text()")
            _wait(f"http://127.0.0.1:{engine_port}/readyz", engine, engine_log, 90)
            targets = {"gateway": [f"127.0.0.1:{gateway.port}"], "engine": [f"127.0.0.1:{engine_port}"]}
            with PrometheusProcess(targets, rule_files=[RULES]) as prom:
                prom.wait_for_targets_up(30)
                # Twice: a counter series is born at its first increment, and Prometheus's rate()
                # cannot see increments made before its first sample. The first pass creates the
                # series; the second, after a few scrapes, moves them.
                _load(gateway.base_url, gateway.dev_key, acme_key, stub.control)
                time.sleep(2.5)
                statuses = _load(gateway.base_url, gateway.dev_key, acme_key, stub.control)
                assert statuses.get(200, 0) >= 30, statuses
                assert any(s >= 500 for s in statuses), statuses
                assert statuses.get(401) and statuses.get(429), statuses
                time.sleep(5)  # a few scrapes and rule evaluations after the load
                _check_everything(prom)
        finally:
            gateway.stop()
            if engine is not None:
                _stop(engine)
            if build.poll() is None:
                build.kill()
    assert time.monotonic() - started < 150


def _check_everything(prom: PrometheusProcess) -> None:
    empty: list[str] = []

    def must_have_data(label: str, expr: str) -> list[dict]:
        result = prom.query(expr)
        if not result:
            empty.append(f"{label}: {expr}")
        return result

    # Every dashboard panel query and every template variable.
    queries = panel_queries()
    assert len(queries) >= 40
    for board, title, expr in queries:
        must_have_data(f"[{board}] {title}", substitute(expr))
    for board, var, expr in variable_queries():
        must_have_data(f"[{board}] variable {var}", substitute(expr))

    # Rules as loaded by Prometheus: all healthy, recorded series present.
    loaded = prom.rules()
    assert len(loaded) == len(rule_exprs()), (len(loaded), prom.log())
    unhealthy = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    for rule in rule_exprs():
        if "record" in rule:
            must_have_data(f"rule {rule['record']} (expr)", rule["expr"])
            must_have_data(f"rule {rule['record']} (recorded series)", rule["record"])
        else:
            # The signal under each threshold must exist; the thresholds decide whether it fires.
            signal = re.sub(r"\s*>\s*\([^()]*\)", "", rule["expr"])
            must_have_data(f"alert {rule['alert']} (signal)", signal)
            prom.query(rule["expr"])  # valid as written

    # The load had ~15% 5xx: the fast availability burn (14.4x of 0.1%) must be true right now,
    # and Prometheus must have the alert pending or firing.
    must_have_data("alert GatewayAvailabilityBurnRateFast (as written)",
                   next(r["expr"] for r in rule_exprs() if r.get("alert") == "GatewayAvailabilityBurnRateFast"))
    deadline = time.monotonic() + 10
    while True:
        states = {r["name"]: r.get("state") for r in prom.rules() if r["type"] == "alerting"}
        if states["GatewayAvailabilityBurnRateFast"] in ("pending", "firing") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    diagnostics = {e: prom.query(e) for e in ("sum by (status) (gateway_requests_total)",
                                              "gateway:slo_availability:error_ratio_rate5m",
                                              "gateway:slo_availability:error_ratio_rate1h")}
    assert not empty, "queries without data:\n  " + "\n  ".join(empty) + f"\n{diagnostics}"
    assert states["GatewayAvailabilityBurnRateFast"] in ("pending", "firing"), states
    _spot_checks(prom)


def _spot_checks(prom: PrometheusProcess) -> None:
    empty: list[str] = []

    def must_have_data(label: str, expr: str) -> None:
        if not prom.query(expr):
            empty.append(f"{label}: {expr}")

    # Spot checks on values, not just presence.
    by_provider = {r["metric"]["provider"]: float(r["value"][1])
                   for r in prom.query("sum by (provider) (gateway_tokens_total)")}
    assert by_provider.get("openai", 0) > 0 and by_provider.get("selfhost", 0) > 0, by_provider
    for expr in ("sum(rate(gateway_requests_total[1m])) > 0", "sum(rate(gateway_cost_usd_total[1m])) > 0",
                 "sum(rate(vllm:generation_tokens_total[1m])) > 0",
                 'sum(rate(gateway_request_time_to_first_token_seconds_count[1m])) > 0'):
        must_have_data("rate check", expr)
    errors = prom.query('sum(gateway_requests_total{status=~"5.."})')
    assert errors and float(errors[0]["value"][1]) >= 1
    # The autoscaling advisor's advice for the self-hosted target, as KEDA's Prometheus trigger reads it.
    desired = prom.query('max(gateway_selfhost_desired_replicas{target="local"})')
    assert desired and 1 <= float(desired[0]["value"][1]) <= 4, desired
    limiting = prom.query('gateway_selfhost_limiting_signal{target="local"} == 1')
    assert len(limiting) == 1 and limiting[0]["metric"]["signal"] != "no_data", limiting
    assert prom.query('gateway_selfhost_replicas{target="local"} == 1'), "the engine's /load was not sampled"
    assert not empty, "no data:\n  " + "\n  ".join(empty)
