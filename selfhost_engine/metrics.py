"""Prometheus metrics for one engine, on a per-app CollectorRegistry (vLLM's names where they match)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .async_engine import AsyncEngine
from .sequence import Sequence

_LAT = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_TPOT = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class _EngineCollector:
    def __init__(self, engine: AsyncEngine, window_s: float = 10.0):
        self.engine = engine
        self.window_s = window_s

    def collect(self):
        ae = self.engine
        eng = ae.engine
        lbl = ["model_name"]
        v = [ae.model_name]
        snap = ae.load()

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=lbl)
            g.add_metric(v, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=lbl)
            c.add_metric(v, value)
            return c

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", snap["running"])
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", snap["waiting"])
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache block usage (1 = full).", snap["kv_usage"])
        yield gauge("vllm:gpu_cache_usage_perc", "KV-cache block usage (1 = full; same as kv_cache_usage_perc).",
                    snap["kv_usage"])
        yield gauge("selfhost:queue_oldest_age_seconds", "Age of the oldest waiting request.",
                    snap.get("oldest_waiting_age_s", 0.0))
        yield gauge("selfhost:queued_prefill_tokens", "Prompt tokens not yet prefilled.", snap["queued_prefill_tokens"])
        yield gauge("selfhost:active_decode_tokens", "Context tokens of running requests.", snap["active_decode_tokens"])
        now = time.monotonic()
        recent = [r for r in list(eng.stats.recent) if now - r[0] <= self.window_s]
        yield gauge("selfhost:prefill_tokens_per_second", f"Prefill tokens/s over the last {self.window_s:g}s.",
                    sum(r[1] for r in recent) / self.window_s)
        yield gauge("selfhost:decode_tokens_per_second", f"Decode tokens/s over the last {self.window_s:g}s.",
                    sum(r[2] for r in recent) / self.window_s)
        bm = eng.block_manager
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", bm.prefix_queries)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens served from the prefix cache.", bm.prefix_hits)
        yield counter("vllm:num_preemptions", "Preemptions (recompute).", eng.scheduler.num_preemptions)
        yield counter("vllm:prompt_tokens", "Prompt tokens received.", eng.stats.prompt_tokens)
        yield counter("vllm:generation_tokens", "Tokens generated.", eng.stats.generation_tokens)
        st = eng.stats
        yield counter("vllm:spec_decode_num_drafts", "Verification steps that carried drafted tokens.", st.spec_drafts)
        yield counter("vllm:spec_decode_num_draft_tokens", "Drafted tokens verified.", st.spec_draft_tokens)
        yield counter("vllm:spec_decode_num_accepted_tokens", "Drafted tokens accepted.", st.spec_accepted_tokens)
        yield gauge("vllm:spec_decode_draft_acceptance_rate", "Accepted / drafted tokens since start.",
                    st.spec_accepted_tokens / st.spec_draft_tokens if st.spec_draft_tokens else 0.0)


class EngineMetrics:
    def __init__(self, engine: AsyncEngine, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        lbl = ["model_name"]
        self.model_name = engine.model_name
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", lbl,
                              buckets=_LAT, registry=self.registry)
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "Time per output token after the first.",
                              lbl, buckets=_TPOT, registry=self.registry)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", lbl,
                             buckets=_LAT, registry=self.registry)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Time from arrival to first scheduling.", lbl,
                               buckets=_LAT, registry=self.registry)
        engine.finish_observers.append(self.on_finish)

    def on_finish(self, seq: Sequence) -> None:
        m = self.model_name
        if seq.first_token_time is not None:
            self.ttft.labels(m).observe(seq.first_token_time - seq.arrival_time)
            if seq.num_output_tokens > 1 and seq.last_token_time is not None:
                self.tpot.labels(m).observe((seq.last_token_time - seq.first_token_time) / (seq.num_output_tokens - 1))
        if seq.finished_time is not None:
            self.e2e.labels(m).observe(seq.finished_time - seq.arrival_time)
        if seq.first_scheduled_time is not None:
            self.queue.labels(m).observe(seq.first_scheduled_time - seq.arrival_time)
