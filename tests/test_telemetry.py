"""Telemetry unit tests: one trace per request with stage children, no content in spans or
labels, and the Prometheus exposition carrying the GenAI and gateway metrics with the right
labels and values."""

from __future__ import annotations

import re

import prometheus_client
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry import RequestRecord, Telemetry

SECRET = "SECRET-PROMPT-7f3a9c"  # stands where prompt/completion text would be
STAGES = ["gateway.auth", "gateway.admission", "gateway.budget", "gateway.cache", "gateway.route", "gateway.attempt"]


def record(**over) -> RequestRecord:
    base = dict(tenant="acme", model="gpt-test", target="stub-openai", provider="openai", stream=True, status=200,
                error_type=None, duration_s=0.42, ttft_s=0.12, queue_s=0.003, prompt_tokens=11,
                completion_tokens=7, cached_tokens=3, cost_usd=0.0125, cache="miss", fallbacks=0, difficulty=0.3)
    base.update(over)
    return RequestRecord(**base)


def samples(tel: Telemetry) -> dict[str, list[tuple[dict, float]]]:
    body, content_type = tel.metrics_text()
    assert content_type.startswith("text/plain")
    out: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(found: dict, name: str, **labels) -> float:
    """The one sample of `name` whose labels include `labels` (fails if none or several)."""
    hits = [v for lbl, v in found.get(name, []) if all(lbl.get(k) == w for k, w in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {found.get(name)}"
    return hits[0]


@pytest.fixture
def traced():
    exporter = InMemorySpanExporter()
    tel = Telemetry(span_exporter=exporter, otlp_endpoint="")
    yield tel, exporter
    tel.shutdown()


def run_request(tel: Telemetry, rec: RequestRecord | None, error: str | None = None):
    root = tel.request_span("chat gpt-test", {"gateway.request_id": "req_1", "gen_ai.request.model": "gpt-test",
                                              "gen_ai.input.messages": SECRET, "gen_ai.prompt.0.content": SECRET})
    for name in STAGES:
        with tel.stage(root, name, {"gateway.target": "stub-openai", "gen_ai.output.messages": SECRET}):
            pass
    tel.end_request_span(root, rec, error=error)
    return root


def test_one_trace_with_stage_children(traced):
    tel, exporter = traced
    run_request(tel, record())
    spans = exporter.get_finished_spans()
    assert len(spans) == 1 + len(STAGES)
    root = [s for s in spans if s.parent is None]
    assert len(root) == 1
    root = root[0]
    children = [s for s in spans if s is not root]
    assert sorted(s.name for s in children) == sorted(STAGES)
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert all(s.parent.span_id == root.context.span_id for s in children)
    assert root.attributes["gen_ai.request.model"] == "gpt-test"
    assert root.attributes["gen_ai.usage.input_tokens"] == 11
    assert root.attributes["gen_ai.usage.output_tokens"] == 7
    assert root.attributes["gen_ai.provider.name"] == "openai"
    assert root.attributes["gateway.target"] == "stub-openai"
    assert root.attributes["http.response.status_code"] == 200
    assert root.status.status_code != StatusCode.ERROR


def test_two_requests_are_two_traces(traced):
    tel, exporter = traced
    run_request(tel, record())
    run_request(tel, record())
    roots = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert len(roots) == 2 and roots[0].context.trace_id != roots[1].context.trace_id


def test_no_content_in_any_span(traced):
    tel, exporter = traced
    run_request(tel, record())
    run_request(tel, None, error="budget_exceeded")
    root = tel.request_span("chat", {"gen_ai.system_instructions": SECRET})
    # An exception whose message quotes the prompt: only its type reaches the span.
    with pytest.raises(ValueError):
        with tel.stage(root, "gateway.admission"):
            raise ValueError(f"cannot parse {SECRET}")
    tel.end_request_span(root, record(status=400, error_type="bad_request"))
    spans = exporter.get_finished_spans()
    assert spans
    for span in spans:
        dumped = span.to_json()
        assert SECRET not in dumped, span.name
    failed = [s for s in spans if s.name == "gateway.admission" and s.status.status_code == StatusCode.ERROR]
    assert failed and failed[0].attributes["error.type"] == "ValueError" and not failed[0].events
    errored = [s for s in spans if s.parent is None and s.attributes.get("error.type") == "budget_exceeded"]
    assert errored and errored[0].status.status_code == StatusCode.ERROR


def test_content_capture_opt_in_keeps_content_attributes():
    exporter = InMemorySpanExporter()
    tel = Telemetry(span_exporter=exporter, otlp_endpoint="", content_capture=True)
    run_request(tel, record())
    assert any(SECRET in s.to_json() for s in exporter.get_finished_spans())
    tel.shutdown()


def test_w3c_traceparent_is_continued(traced):
    tel, exporter = traced
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    root = tel.request_span("chat", {}, headers={"traceparent": parent})
    tel.end_request_span(root, record())
    span = exporter.get_finished_spans()[-1]
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"


def test_without_exporter_spans_are_free_noops(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    tel = Telemetry()
    root = tel.request_span("chat", {"a": 1})
    assert root is INVALID_SPAN and not root.is_recording()
    with tel.stage(root, "gateway.auth") as child:
        assert not child.is_recording()
    tel.end_request_span(root, record())
    tel.shutdown()


def test_otlp_endpoint_from_env_configures_a_batch_exporter(monkeypatch):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9/")
    tel = Telemetry()
    assert tel.tracing
    processors = tel.tracer_provider._active_span_processor._span_processors
    batch = [p for p in processors if isinstance(p, BatchSpanProcessor)]
    assert batch and isinstance(batch[0]._batch_processor._exporter, OTLPSpanExporter)
    assert batch[0]._batch_processor._exporter._endpoint == "http://127.0.0.1:9/v1/traces"
    tel.tracer_provider.shutdown = lambda: None  # nothing listens on port 9: do not flush
    tel.meter_provider.shutdown()


def test_request_metrics_genai_and_gateway(traced):
    tel, _ = traced
    tel.request_done(record())
    tel.request_done(record(stream=False, ttft_s=None, duration_s=2.0, prompt_tokens=100, completion_tokens=50,
                            cached_tokens=0, cost_usd=0.5))
    tel.request_done(record(target="local", provider="selfhost", stream=False, ttft_s=None, cost_usd=0.0,
                            status=200, cache="bypass"))
    tel.request_done(record(status=502, error_type="Unavailable", prompt_tokens=0, completion_tokens=0,
                            cached_tokens=0, cost_usd=0.0, ttft_s=None, fallbacks=1))
    found = samples(tel)

    # GenAI semantic conventions
    assert value(found, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", gen_ai_provider_name="openai",
                 gen_ai_request_model="gpt-test") == 111
    assert value(found, "gen_ai_client_token_usage_sum", gen_ai_token_type="output",
                 gen_ai_provider_name="openai") == 57
    assert value(found, "gen_ai_client_token_usage_count", gen_ai_token_type="input",
                 gen_ai_provider_name="openai") == 2  # the failed request used no tokens
    assert value(found, "gen_ai_client_token_usage_bucket", gen_ai_token_type="input", gen_ai_provider_name="openai",
                 le="16.0") == 1
    assert value(found, "gen_ai_client_operation_duration_seconds_count", gen_ai_provider_name="openai",
                 error_type="") == 2
    assert value(found, "gen_ai_client_operation_duration_seconds_count", error_type="Unavailable") == 1
    assert value(found, "gen_ai_client_token_usage_sum", gen_ai_provider_name="selfhost",
                 gen_ai_token_type="input") == 11

    # gateway request metrics
    assert value(found, "gateway_requests_total", tenant="acme", model="gpt-test", target="stub-openai",
                 status="200", stream="true", cache="miss") == 1
    assert value(found, "gateway_requests_total", status="502") == 1
    assert value(found, "gateway_requests_total", provider="selfhost", cache="bypass") == 1
    assert value(found, "gateway_request_duration_seconds_sum", stream="false", status="200",
                 provider="openai") == pytest.approx(2.0)
    assert value(found, "gateway_request_duration_seconds_bucket", stream="true", status="200", le="0.5") == 1
    assert value(found, "gateway_request_duration_seconds_bucket", stream="true", status="200", le="0.25") == 0
    assert value(found, "gateway_request_time_to_first_token_seconds_count", stream="true") == 1
    assert value(found, "gateway_request_time_to_first_token_seconds_bucket", le="1.0") == 1
    assert value(found, "gateway_request_queue_time_seconds_count", tenant="acme", model="gpt-test") == 4
    assert value(found, "gateway_cost_usd_total", provider="openai", target="stub-openai") == pytest.approx(0.5125)
    assert value(found, "gateway_cost_usd_total", provider="selfhost", target="local") == 0
    assert value(found, "gateway_tokens_total", provider="openai", type="input") == 111
    assert value(found, "gateway_tokens_total", provider="openai", type="output") == 57
    assert value(found, "gateway_tokens_total", provider="openai", type="cached_input") == 3
    assert value(found, "gateway_errors_total", type="Unavailable", target="stub-openai", model="gpt-test") == 1


def test_event_metrics():
    tel = Telemetry(otlp_endpoint="")
    tel.rejected("auth", None, None)
    tel.rejected("budget", "acme", "gpt-test")
    tel.rejected("budget", "acme", "gpt-test")
    tel.attempt("stub-openai", "openai", "RateLimited", 0.05)
    tel.attempt("stub-openai", "openai", None, 0.2)
    tel.attempt("local", "selfhost", None, 0.3)
    tel.failover("stub-openai", "local")
    tel.failover("local", None)
    tel.breaker_state("stub-openai", "open")
    tel.breaker_state("local", "half_open")
    tel.breaker_state("local", "closed")
    tel.budget_remaining("acme", "usd_per_day", 4.25)
    tel.budget_remaining("acme", "usd_per_day", 3.75)
    tel.cache_event("acme", "gpt-test", "hit", tokens_saved=18, usd_saved=0.01)
    tel.cache_event("acme", "gpt-test", "hit", tokens_saved=18, usd_saved=0.01)
    tel.cache_event("acme", "gpt-test", "miss")
    tel.policy_reload(True)
    tel.policy_reload(False)
    tel.policy_reload(True)
    found = samples(tel)
    assert value(found, "gateway_rejections_total", reason="auth", tenant="unknown", model="unknown") == 1
    assert value(found, "gateway_rejections_total", reason="budget", tenant="acme", model="gpt-test") == 2
    assert value(found, "gateway_attempts_total", target="stub-openai", outcome="RateLimited") == 1
    assert value(found, "gateway_attempts_total", target="stub-openai", outcome="ok") == 1
    assert value(found, "gateway_attempt_duration_seconds_count", target="local", outcome="ok") == 1
    assert value(found, "gateway_failovers_total", from_target="stub-openai", to_target="local") == 1
    assert value(found, "gateway_failovers_total", from_target="local", to_target="none") == 1
    assert value(found, "gateway_breaker_state", target="stub-openai") == 2
    assert value(found, "gateway_breaker_state", target="local") == 0
    assert value(found, "gateway_budget_remaining", tenant="acme", window="usd_per_day") == 3.75
    assert value(found, "gateway_cache_requests_total", outcome="hit") == 2
    assert value(found, "gateway_cache_requests_total", outcome="miss") == 1
    assert value(found, "gateway_cache_saved_tokens_total", tenant="acme") == 36
    assert value(found, "gateway_cache_saved_usd_total", tenant="acme") == pytest.approx(0.02)
    assert value(found, "gateway_policy_reloads_total", result="ok") == 2
    assert value(found, "gateway_policy_reloads_total", result="error") == 1
    tel.shutdown()


def test_no_content_in_metric_labels():
    tel = Telemetry(otlp_endpoint="")
    tel.request_done(record())
    tel.rejected("model_not_found", None, None)
    body = tel.metrics_text()[0].decode()
    assert SECRET not in body
    # Labels are the declared ones only: nothing free-form beyond tenant/model/target names.
    labels = set(re.findall(r"[{,]([a-z_]+)=", body))
    assert labels <= {"tenant", "model", "target", "provider", "stream", "status", "cache", "type", "reason", "le",
                      "outcome", "from_target", "to_target", "window", "result", "error_type", "gen_ai_token_type",
                      "gen_ai_request_model", "gen_ai_provider_name", "gen_ai_operation_name", "service_name",
                      "service_instance_id", "telemetry_sdk_language", "telemetry_sdk_name",
                      "telemetry_sdk_version"}, labels
    tel.shutdown()


def test_caller_controlled_labels_are_bounded():
    tel = Telemetry(otlp_endpoint="")
    for i in range(500):
        tel.rejected("model_not_found", "acme", f"no-such-model-{i}")
    models = {lbl["model"] for lbl, _ in samples(tel)["gateway_rejections_total"]}
    assert len(models) <= 201 and "_other" in models
    tel.shutdown()


def test_private_registry_and_independent_instances():
    a, b = Telemetry(otlp_endpoint=""), Telemetry(otlp_endpoint="")
    a.request_done(record())
    a.request_done(record())
    b.request_done(record())
    assert value(samples(a), "gateway_requests_total", status="200") == 2
    assert value(samples(b), "gateway_requests_total", status="200") == 1
    assert b"gateway_requests_total" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
    a.shutdown()
    b.shutdown()


def test_hot_path_is_cheap():
    """A generous ceiling (the box is shared): the per-request metrics cost stays far below 1 ms."""
    import time

    tel = Telemetry(otlp_endpoint="")
    rec = record()
    for _ in range(200):
        tel.request_done(rec)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        tel.request_done(rec)
        tel.attempt("stub-openai", "openai", None, 0.2)
        tel.cache_event("acme", "gpt-test", "miss")
        tel.budget_remaining("acme", "usd_per_day", 1.0)
        span = tel.request_span("chat", {})
        for name in STAGES:
            with tel.stage(span, name):
                pass
        tel.end_request_span(span, rec)
    per_request = (time.perf_counter() - start) / n
    assert per_request < 400e-6, per_request
    tel.shutdown()
