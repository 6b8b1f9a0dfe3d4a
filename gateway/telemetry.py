"""Telemetry: OpenTelemetry spans and metrics for every stage of a request.

(One file of ~650 lines on purpose: every metric name, its labels and its hot-path recording sit
together, so the table below, the dashboards and the code cannot drift apart.)

One `Telemetry` object per app. It owns its own SDK `TracerProvider` and `MeterProvider` (the
global providers are never set, so several apps in one process do not clash) and a private
`prometheus_client.CollectorRegistry` that the OTel `PrometheusMetricReader` registers its
collector on; `metrics_text()` renders that registry for `GET /metrics`.

Metric names follow the OpenTelemetry GenAI semantic conventions where they exist
(`gen_ai.client.token.usage`, `gen_ai.client.operation.duration`); the rest are `gateway.*`.
What Prometheus sees (dots become underscores, the unit is appended, counters get `_total`):

    gen_ai_client_token_usage_{bucket,sum,count}              gen_ai_token_type, gen_ai_request_model,
                                                              gen_ai_provider_name, gen_ai_operation_name
    gen_ai_client_operation_duration_seconds_{bucket,sum,count}  gen_ai_request_model, gen_ai_provider_name,
                                                              gen_ai_operation_name, error_type
    gateway_request_duration_seconds_{bucket,sum,count}       tenant, model, target, provider, stream, status
    gateway_request_time_to_first_token_seconds_{...}         tenant, model, target, provider, stream
    gateway_request_queue_time_seconds_{...}                  tenant, model
    gateway_requests_total                                    tenant, model, target, provider, stream, status, cache
    gateway_cost_usd_total                                    tenant, model, target, provider
    gateway_tokens_total                                      tenant, model, provider, type (input|output|cached_input)
    gateway_errors_total                                      type, model, target
    gateway_cache_requests_total                              tenant, model, outcome (hit|miss|bypass)
    gateway_cache_saved_tokens_total / gateway_cache_saved_usd_total   tenant, model
    gateway_routing_saved_usd_total                           tenant, route (cost avoided against the frontier)
    gateway_attempts_total                                    target, provider, outcome ("ok" or the error type)
    gateway_attempt_duration_seconds_{...}                    target, provider, outcome
    gateway_failovers_total                                   from_target, to_target ("none": nothing left)
    gateway_breaker_state                                     target (0 closed, 1 half_open, 2 open)
    gateway_budget_remaining                                  tenant, window
    gateway_state_store_up                                    (1: the shared Redis answers; 0: fail mode)
    gateway_budget_journal_pending                            (settles waiting to be replayed into Redis)
    gateway_budget_overspend                                  window (over the limit after fail-open replays)
    gateway_selfhost_desired_replicas                         target (the autoscaling advisor's advice)
    gateway_selfhost_replicas                                 target (replicas that reported load)
    gateway_selfhost_limiting_signal                          target, signal (1: the signal limiting the advice)
    gateway_rejections_total                                  reason, tenant, model
    gateway_policy_reloads_total                              result (ok|error)
    target_info                                               service_name, ... (resource)

Hot path: every method is a handful of dict lookups plus the SDK's `add`/`record`. Attribute
dicts are built once per label tuple and cached; with no span exporter configured, spans are
the SDK's non-recording `INVALID_SPAN` and stages are a shared no-op context manager.

Privacy: no prompt or completion text goes into any span attribute or metric label unless
`content_capture=True`. Known content attributes (`gen_ai.input.messages`, ...) passed by callers
are dropped, and exception messages are never recorded on spans (only the exception type).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation import set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["RequestRecord", "Telemetry", "BREAKER_STATES", "LATENCY_BUCKETS"]

# Seconds, 5 ms ... 60 s; 1.0 is a bucket bound so the TTFT SLO (< 1 s) reads straight off it.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
# Gateway-side queueing (auth, admission, budgets, cache) is short: finer at the bottom.
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# GenAI semantic conventions' advisory buckets.
# Floats throughout so `le` labels read "16.0", "1.0": what Prometheus 3 normalizes classic buckets to.
GENAI_TOKEN_BUCKETS = tuple(float(4 ** i) for i in range(14))  # 1 ... 67108864
GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

BREAKER_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}

# gen_ai.provider.name values from the semantic conventions, where ours differ.
_GENAI_PROVIDER = {"azure": "azure.ai.openai"}

# Span attributes that carry prompt/completion content (GenAI semconv names and older ones).
_CONTENT_KEYS = frozenset({
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt",
    "gen_ai.completion", "gen_ai.tool.definitions", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
    "llm.prompts", "llm.completions", "input.value", "output.value",
})
_CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.prompts.", "llm.completions.")

_MAX_CACHED_LABELSETS = 20_000
_MAX_FREE_LABEL_VALUES = 200  # distinct values kept for caller-influenced labels (then "_other")


# (OTel name, unit, description): cumulative counters kept in local cells, read at collection.
_COUNTERS = (
    ("gateway.requests", "{request}", "Requests finished, by status."),
    ("gateway.cost.usd", "{USD}", "Spend in US dollars."),
    ("gateway.tokens", "{token}", "Tokens by type (input, output, cached_input)."),
    ("gateway.errors", "{error}", "Failed requests by error type."),
    ("gateway.cache.requests", "{request}", "Response-cache lookups by outcome (hit, miss, bypass)."),
    ("gateway.cache.saved_tokens", "{token}", "Tokens not sent upstream thanks to the response cache."),
    ("gateway.cache.saved_usd", "{USD}", "Spend avoided thanks to the response cache."),
    ("gateway.routing.saved_usd", "{USD}",
     "Spend avoided by difficulty routing: the frontier's price for each routed request minus what it cost."),
    ("gateway.attempts", "{attempt}", "Upstream attempts by outcome (ok or the error type)."),
    ("gateway.failovers", "{failover}", "Failovers from one target to the next (to_target none: nothing left)."),
    ("gateway.rejections", "{request}", "Requests rejected before reaching an upstream, by reason."),
    ("gateway.policy.reloads", "{reload}", "Policy reloads by result."),
)
_GAUGES = (
    ("gateway.breaker.state", "", "Breaker state per target: 0 closed, 1 half-open, 2 open."),
    ("gateway.budget.remaining", "", "Budget left in the current window, in the window's unit."),
    ("gateway.state.store_up", "", "1 while the shared state store (Redis) answers, 0 while its fail mode serves."),
    ("gateway.budget.journal_pending", "", "Budget settles journaled while Redis was unreachable, not yet replayed."),
    ("gateway.budget.overspend", "", "Spend over a window's limit found after replaying a fail-open journal."),
    ("gateway.selfhost.desired_replicas", "", "Replicas the autoscaling advisor recommends for a self-hosted target."),
    ("gateway.selfhost.replicas", "", "Replicas of a self-hosted target that reported load in the last sample."),
    ("gateway.selfhost.limiting_signal", "",
     "1 for the signal that limits the advice (waiting_requests, queued_prefill_tokens, active_decode_tokens, "
     "kv_usage, min_replicas, max_replicas, idle, no_data), 0 for the others."),
)


@dataclass(slots=True)
class _Cell:
    """One counter or gauge value with its attributes, read by the observable instrument."""

    value: float
    attrs: dict


def _cell(cells: dict[tuple, _Cell], attrs: dict) -> _Cell:
    """The cell of one label set (created once; cumulative for its lifetime)."""
    key = tuple(sorted(attrs.items()))
    cell = cells.get(key)
    if cell is None:
        cell = cells[key] = _Cell(0, attrs)
    return cell


def _observe(cells: dict[tuple, _Cell]):
    def callback(_options: CallbackOptions) -> list[Observation]:
        return [Observation(cell.value, cell.attrs) for cell in list(cells.values())]

    return callback


@dataclass(frozen=True, slots=True)
class _RequestSets:
    """Per label tuple of a finished request: attribute dicts for the histograms, and the counter
    cells to add to. Built once per distinct label tuple."""

    input_tokens: dict
    output_tokens: dict
    genai_duration: dict
    duration: dict
    ttft: dict
    queue: dict
    requests: _Cell
    cost: _Cell
    input: _Cell
    output: _Cell
    cached: _Cell
    errors: _Cell | None


@dataclass(frozen=True, slots=True)
class _AttemptSets:
    count: _Cell
    attrs: dict


@dataclass(frozen=True, slots=True)
class _CacheSets:
    requests: _Cell
    saved_tokens: _Cell
    saved_usd: _Cell


@dataclass(slots=True)
class RequestRecord:
    tenant: str
    model: str
    target: str | None
    provider: str | None  # "openai" | "azure" | "anthropic" | "selfhost"
    stream: bool
    status: int
    error_type: str | None  # taxonomy class name or gateway error code
    duration_s: float
    ttft_s: float | None
    queue_s: float  # auth/admission/budget/cache time before the first upstream attempt
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    cache: str  # "hit" | "miss" | "bypass"
    fallbacks: int
    difficulty: float | None = None


class _NoopStage:
    """What `stage()` returns when tracing is off: no allocation, no work."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *_: object) -> bool:
        return False


_NOOP_STAGE = _NoopStage()


class _Stage:
    """A child span of the request span, ended on exit. Not attached to the current context:
    stages of a streamed request may end in another task than the one that opened them."""

    __slots__ = ("_tracer", "_parent", "_name", "_attributes", "_span")

    def __init__(self, tracer: trace.Tracer, parent: Span, name: str, attributes: dict | None) -> None:
        self._tracer = tracer
        self._parent = parent
        self._name = name
        self._attributes = attributes
        self._span: Span = INVALID_SPAN

    def __enter__(self) -> Span:
        self._span = self._tracer.start_span(
            self._name, context=set_span_in_context(self._parent), attributes=self._attributes
        )
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> bool:
        span = self._span
        if exc_type is not None:
            # The type (or the gateway error code) only: exception messages can quote user input.
            kind = getattr(exc, "code", None) or exc_type.__name__
            if not isinstance(kind, str):
                kind = exc_type.__name__
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, kind))
        span.end()
        return False


def _label(value: object, default: str = "none") -> str:
    if value is None or value == "":
        return default
    return value if isinstance(value, str) else str(value)


class _Bounded:
    """Caps the distinct values of a label that a caller can influence (cardinality guard)."""

    __slots__ = ("_seen", "_limit", "_lock")

    def __init__(self, limit: int = _MAX_FREE_LABEL_VALUES) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) >= self._limit:
                return "_other"
            value = value[:128]
            self._seen.add(value)
            return value


class Telemetry:
    def __init__(
        self,
        *,
        service_name: str = "hybrid-gateway",
        otlp_endpoint: str | None = None,
        span_exporter: SpanExporter | None = None,
        content_capture: bool = False,
    ) -> None:
        self.content_capture = content_capture
        self.resource = Resource.create({"service.name": service_name})

        # -- traces ---------------------------------------------------------------------------
        self.tracer_provider = TracerProvider(resource=self.resource)
        self.tracing = False
        endpoint = otlp_endpoint if otlp_endpoint is not None else os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        traces_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if endpoint or (otlp_endpoint is None and traces_endpoint):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            if otlp_endpoint is None and traces_endpoint:
                exporter = OTLPSpanExporter(endpoint=traces_endpoint)
            else:
                base = endpoint.rstrip("/")
                exporter = OTLPSpanExporter(endpoint=base if base.endswith("/v1/traces") else base + "/v1/traces")
            self.tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
            self.tracing = True
        if span_exporter is not None:
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
            self.tracing = True
        self.tracer = self.tracer_provider.get_tracer("gateway")
        self._propagator = TraceContextTextMapPropagator()

        # -- metrics --------------------------------------------------------------------------
        # The reader registers its collector on the registry it is given: a private one, never
        # prometheus_client's global REGISTRY.
        self.registry = CollectorRegistry(auto_describe=False)
        self.reader = PrometheusMetricReader(scope_info_enabled=False, registry=self.registry)
        self.meter_provider = MeterProvider(resource=self.resource, metric_readers=[self.reader],
                                           exemplar_filter=AlwaysOffExemplarFilter())
        m = self.meter_provider.get_meter("gateway")

        # Histograms: synchronous SDK instruments (~3-8 us a record: the SDK cleans and hashes
        # the attribute dict on every call, hence the cached dicts below).
        hist = m.create_histogram
        self._genai_tokens = hist(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per GenAI operation.",
            explicit_bucket_boundaries_advisory=GENAI_TOKEN_BUCKETS)
        self._genai_duration = hist(
            "gen_ai.client.operation.duration", unit="s", description="Duration of GenAI operations.",
            explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS)
        self._duration = hist(
            "gateway.request.duration", unit="s", description="End-to-end request latency seen by the gateway.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        self._ttft = hist(
            "gateway.request.time_to_first_token", unit="s", description="Time to the first token sent to the caller.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        self._queue = hist(
            "gateway.request.queue_time", unit="s",
            description="Time in auth, admission, budgets and cache before the first upstream attempt.",
            explicit_bucket_boundaries_advisory=QUEUE_BUCKETS)
        self._attempt_duration = hist(
            "gateway.attempt.duration", unit="s", description="Duration of one upstream attempt.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)

        # Counters and gauges: the hot path adds to a plain [value, attributes] cell under a lock
        # (well under a microsecond); OTel observable instruments report the cumulative values
        # when the reader collects. A synchronous SDK `add` would cost as much as a histogram record.
        self._lock = threading.Lock()
        cells: dict[str, dict[tuple, _Cell]] = {}
        for name, unit, description in _COUNTERS:
            cells[name] = c = {}
            m.create_observable_counter(name, callbacks=[_observe(c)], unit=unit, description=description)
        for name, unit, description in _GAUGES:
            cells[name] = c = {}
            m.create_observable_gauge(name, callbacks=[_observe(c)], unit=unit, description=description)
        self._requests = cells["gateway.requests"]
        self._cost = cells["gateway.cost.usd"]
        self._tokens = cells["gateway.tokens"]
        self._errors = cells["gateway.errors"]
        self._cache_requests = cells["gateway.cache.requests"]
        self._cache_saved_tokens = cells["gateway.cache.saved_tokens"]
        self._cache_saved_usd = cells["gateway.cache.saved_usd"]
        self._routing_saved = cells["gateway.routing.saved_usd"]
        self._attempts = cells["gateway.attempts"]
        self._failovers = cells["gateway.failovers"]
        self._rejections = cells["gateway.rejections"]
        self._reloads = cells["gateway.policy.reloads"]
        self._breaker = cells["gateway.breaker.state"]
        self._budget = cells["gateway.budget.remaining"]
        self._store_up = cells["gateway.state.store_up"]
        self._journal = cells["gateway.budget.journal_pending"]
        self._overspend = cells["gateway.budget.overspend"]
        self._desired_replicas = cells["gateway.selfhost.desired_replicas"]
        self._replicas = cells["gateway.selfhost.replicas"]
        self._limiting = cells["gateway.selfhost.limiting_signal"]
        self._limiting_sets: dict[str, dict[str, _Cell]] = {}  # target -> signal -> cell

        # label tuple -> prebuilt attribute dicts and counter cells
        self._request_sets: dict[tuple, _RequestSets] = {}
        self._cache_sets: dict[tuple, _CacheSets] = {}
        self._attempt_sets: dict[tuple, _AttemptSets] = {}
        self._failover_sets: dict[tuple, _Cell] = {}
        self._breaker_sets: dict[str, _Cell] = {}
        self._budget_sets: dict[tuple, _Cell] = {}
        self._reject_sets: dict[tuple, _Cell] = {}
        self._routing_sets: dict[tuple, _Cell] = {}
        self._reload_sets = {ok: _cell(self._reloads, {"result": "ok" if ok else "error"}) for ok in (True, False)}
        self._free_model = _Bounded()
        self._free_tenant = _Bounded()
        self._free_reason = _Bounded(64)
        self._closed = False

    # -- metrics endpoint -----------------------------------------------------------------------

    def metrics_text(self) -> tuple[bytes, str]:
        """Body and content type for `GET /metrics` (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    # -- traces ---------------------------------------------------------------------------------

    def _clean(self, attributes: Mapping[str, Any] | None) -> dict | None:
        if not attributes:
            return None
        if self.content_capture:
            return dict(attributes)
        return {k: v for k, v in attributes.items()
                if k not in _CONTENT_KEYS and not k.startswith(_CONTENT_PREFIXES)}

    def request_span(self, name: str, attributes: dict, headers: Mapping[str, str] | None = None) -> Span:
        """The root span of one request; not made current. `headers` (optional, an extension of
        the contract) continues a caller's W3C `traceparent`."""
        if not self.tracing:
            return INVALID_SPAN
        context = Context()
        if headers is not None and "traceparent" in headers:
            context = self._propagator.extract(headers, context=context)
        return self.tracer.start_span(name, context=context, kind=SpanKind.SERVER,
                                      attributes=self._clean(attributes))

    def end_request_span(self, span: Span, record: RequestRecord | None, error: str | None = None) -> None:
        if not span.is_recording():
            return
        if record is not None:
            provider = record.provider
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": record.model,
                "gen_ai.usage.input_tokens": record.prompt_tokens,
                "gen_ai.usage.output_tokens": record.completion_tokens,
                "http.response.status_code": record.status,
                "gateway.tenant": record.tenant,
                "gateway.stream": record.stream,
                "gateway.cache": record.cache,
                "gateway.fallbacks": record.fallbacks,
                "gateway.cost_usd": record.cost_usd,
                "gateway.queue_s": record.queue_s,
                "gateway.duration_s": record.duration_s,
                "gateway.cached_tokens": record.cached_tokens,
            }
            if provider:
                attrs["gen_ai.provider.name"] = _GENAI_PROVIDER.get(provider, provider)
            if record.target:
                attrs["gateway.target"] = record.target
            if record.ttft_s is not None:
                attrs["gateway.ttft_s"] = record.ttft_s
            if record.difficulty is not None:
                attrs["gateway.difficulty"] = record.difficulty
            if record.error_type:
                attrs["error.type"] = record.error_type
            span.set_attributes(attrs)
            if record.status >= 500 or (error is None and record.error_type and record.status >= 400):
                span.set_status(Status(StatusCode.ERROR, record.error_type or str(record.status)))
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def stage(self, parent: Span, name: str, attributes: dict | None = None) -> _Stage | _NoopStage:
        if not self.tracing or not parent.is_recording():
            return _NOOP_STAGE
        return _Stage(self.tracer, parent, name, self._clean(attributes))

    # -- metrics --------------------------------------------------------------------------------

    def _request_labels(self, r: RequestRecord) -> _RequestSets:
        key = (r.tenant, r.model, r.target, r.provider, r.stream, r.status, r.cache, r.error_type)
        sets = self._request_sets.get(key)
        if sets is not None:
            return sets
        tenant, model = _label(r.tenant, "unknown"), _label(r.model, "unknown")
        target, provider = _label(r.target), _label(r.provider)
        stream = "true" if r.stream else "false"
        status = str(r.status)
        genai_provider = _GENAI_PROVIDER.get(provider, provider)
        genai = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model, "gen_ai.provider.name": genai_provider}
        genai_duration = dict(genai)
        if r.error_type:
            genai_duration["error.type"] = r.error_type
        per_target = {"tenant": tenant, "model": model, "target": target, "provider": provider}
        with self._lock:
            sets = _RequestSets(
                input_tokens={"gen_ai.token.type": "input", **genai},
                output_tokens={"gen_ai.token.type": "output", **genai},
                genai_duration=genai_duration,
                duration={**per_target, "stream": stream, "status": status},
                ttft={**per_target, "stream": stream},
                queue={"tenant": tenant, "model": model},
                requests=_cell(self._requests, {**per_target, "stream": stream, "status": status,
                                                "cache": _label(r.cache, "bypass")}),
                cost=_cell(self._cost, per_target),
                input=_cell(self._tokens, {"tenant": tenant, "model": model, "provider": provider, "type": "input"}),
                output=_cell(self._tokens, {"tenant": tenant, "model": model, "provider": provider, "type": "output"}),
                cached=_cell(self._tokens, {"tenant": tenant, "model": model, "provider": provider,
                                            "type": "cached_input"}),
                errors=_cell(self._errors, {"type": r.error_type, "model": model, "target": target})
                if r.error_type else None,
            )
            if len(self._request_sets) >= _MAX_CACHED_LABELSETS:
                self._request_sets.clear()
            self._request_sets[key] = sets
        return sets

    def request_done(self, record: RequestRecord) -> None:
        s = self._request_labels(record)
        prompt, completion = record.prompt_tokens, record.completion_tokens
        with self._lock:
            s.requests.value += 1
            if record.target is not None:
                s.cost.value += record.cost_usd  # zero too: a self-hosted target's share still shows
            if prompt or completion:
                s.input.value += prompt
                s.output.value += completion
                if record.cached_tokens:
                    s.cached.value += record.cached_tokens
            if s.errors is not None:
                s.errors.value += 1
        duration = record.duration_s
        self._duration.record(duration, s.duration)
        self._genai_duration.record(duration, s.genai_duration)
        if record.ttft_s is not None:
            self._ttft.record(record.ttft_s, s.ttft)
        self._queue.record(record.queue_s, s.queue)
        if prompt or completion:
            self._genai_tokens.record(prompt, s.input_tokens)
            self._genai_tokens.record(completion, s.output_tokens)

    def rejected(self, reason: str, tenant: str | None, model: str | None) -> None:
        key = (reason, tenant, model)
        cell = self._reject_sets.get(key)
        if cell is None:
            # The model (and, before auth, the tenant) can be whatever a caller sent: bounded.
            attrs = {"reason": self._free_reason(_label(reason, "unknown")),
                     "tenant": self._free_tenant(_label(tenant, "unknown")),
                     "model": self._free_model(_label(model, "unknown"))}
            with self._lock:
                cell = _cell(self._rejections, attrs)
            if len(self._reject_sets) >= _MAX_CACHED_LABELSETS:
                self._reject_sets.clear()
            self._reject_sets[key] = cell
        with self._lock:
            cell.value += 1

    def attempt(self, target: str, provider: str, error_type: str | None, seconds: float) -> None:
        key = (target, provider, error_type)
        sets = self._attempt_sets.get(key)
        if sets is None:
            attrs = {"target": _label(target), "provider": _label(provider), "outcome": error_type or "ok"}
            with self._lock:
                sets = self._attempt_sets[key] = _AttemptSets(_cell(self._attempts, attrs), attrs)
        with self._lock:
            sets.count.value += 1
        self._attempt_duration.record(seconds, sets.attrs)

    def failover(self, from_target: str, to_target: str | None) -> None:
        key = (from_target, to_target)
        cell = self._failover_sets.get(key)
        if cell is None:
            with self._lock:
                cell = self._failover_sets[key] = _cell(
                    self._failovers, {"from_target": _label(from_target), "to_target": _label(to_target)})
        with self._lock:
            cell.value += 1

    def breaker_state(self, target: str, state: str) -> None:
        cell = self._breaker_sets.get(target)
        if cell is None:
            with self._lock:
                cell = self._breaker_sets[target] = _cell(self._breaker, {"target": _label(target)})
        cell.value = BREAKER_STATES.get(state, 2)

    def budget_remaining(self, tenant: str, window: str, remaining: float) -> None:
        key = (tenant, window)
        cell = self._budget_sets.get(key)
        if cell is None:
            with self._lock:
                cell = self._budget_sets[key] = _cell(
                    self._budget, {"tenant": _label(tenant, "unknown"), "window": _label(window, "unknown")})
        cell.value = remaining

    def state_layer(self, up: bool, journal_pending: int, overspend: dict[str, float]) -> None:
        """The shared-state layer's health (state/) and the fail-open books (budgets)."""
        with self._lock:
            _cell(self._store_up, {}).value = 1 if up else 0
            _cell(self._journal, {}).value = journal_pending
            for window, amount in overspend.items():
                _cell(self._overspend, {"window": _label(window, "unknown")}).value = amount

    def autoscale(self, target: str, desired: int, replicas: int, signal: str) -> None:
        """The advisor's latest advice for one self-hosted target (gateway/autoscale.py). The
        limiting signal is a state set: the current one reads 1, every one seen before reads 0."""
        t = _label(target)
        with self._lock:
            _cell(self._desired_replicas, {"target": t}).value = desired
            _cell(self._replicas, {"target": t}).value = replicas
            cells = self._limiting_sets.setdefault(t, {})
            if signal not in cells:
                cells[signal] = _cell(self._limiting, {"target": t, "signal": _label(signal, "unknown")})
            for name, cell in cells.items():
                cell.value = 1 if name == signal else 0

    def cache_event(self, tenant: str, model: str, outcome: str, tokens_saved: int = 0, usd_saved: float = 0.0) -> None:
        key = (tenant, model, outcome)
        sets = self._cache_sets.get(key)
        if sets is None:
            labels = {"tenant": _label(tenant, "unknown"), "model": _label(model, "unknown")}
            with self._lock:
                sets = self._cache_sets[key] = _CacheSets(
                    requests=_cell(self._cache_requests, {**labels, "outcome": _label(outcome, "unknown")}),
                    saved_tokens=_cell(self._cache_saved_tokens, labels),
                    saved_usd=_cell(self._cache_saved_usd, labels),
                )
        with self._lock:
            sets.requests.value += 1
            if tokens_saved or usd_saved:
                sets.saved_tokens.value += tokens_saved
                sets.saved_usd.value += usd_saved

    def routing_saved(self, tenant: str, route: str | None, usd: float) -> None:
        """Cost avoided by routing one answered request away from the frontier (gateway/routing/savings.py)."""
        key = (tenant, route)
        cell = self._routing_sets.get(key)
        if cell is None:
            with self._lock:
                cell = self._routing_sets[key] = _cell(self._routing_saved, {
                    "tenant": self._free_tenant(_label(tenant, "unknown")), "route": _label(route)})
        with self._lock:
            cell.value += usd

    def policy_reload(self, ok: bool) -> None:
        cell = self._reload_sets[bool(ok)]
        with self._lock:
            cell.value += 1

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.tracer_provider.shutdown()
        finally:
            self.meter_provider.shutdown()


class NullTelemetry:
    """Telemetry switched off: the same calls, doing nothing (no `if telemetry is not None` guards)."""

    tracing = False

    def request_span(self, name: str, attributes: dict, headers: Mapping[str, str] | None = None) -> Span:
        return INVALID_SPAN

    def end_request_span(self, span: Span, record: RequestRecord | None, error: str | None = None) -> None:
        pass

    def stage(self, parent: Span, name: str, attributes: dict | None = None) -> _NoopStage:
        return _NOOP_STAGE

    def request_done(self, record: RequestRecord) -> None:
        pass

    def rejected(self, reason: str, tenant: str | None, model: str | None) -> None:
        pass

    def attempt(self, target: str, provider: str, error_type: str | None, seconds: float) -> None:
        pass

    def failover(self, from_target: str, to_target: str | None) -> None:
        pass

    def cache_event(self, tenant: str, model: str, outcome: str, tokens_saved: int = 0, usd_saved: float = 0.0) -> None:
        pass

    def routing_saved(self, tenant: str, route: str | None, usd: float) -> None:
        pass
