"""Prometheus metrics of the server, kept in a `prometheus_client` registry and rendered by its exposition code.

prometheus_client is the Prometheus project's own Python client: its text format, escaping, histogram buckets and
content negotiation follow the specification as it evolves, which a hand-written renderer would have to track.
Each server gets its own registry, so that several servers in one process (tests) do not share series.
Updates come from the event loop and the engine thread; the library's metrics are thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

PREFIX = "minimax01_"

# Latencies of a CPU tiny model (~ms) up to a real model under load (~s).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                                      0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0)
REQUEST_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Gauges read from the engine's stats at scrape time (so they can never go stale): name, help, stats key.
ENGINE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("num_requests_waiting", "Requests queued for a slot (queue depth).", "num_waiting"),
    ("num_requests_running", "Requests holding a slot (running batch size).", "num_running"),
    ("free_slots", "Free sequence slots (lightning state) out of max_num_seqs.", "free_slots"),
    ("num_slots", "Sequence slots in total (max_num_seqs).", "num_slots"),
    ("free_kv_blocks", "Free paged KV-cache blocks.", "free_kv_blocks"),
    ("num_kv_blocks", "Paged KV-cache blocks in total.", "num_kv_blocks"),
    ("last_step_batch_tokens", "Tokens computed in the engine's last step.", "last_step_tokens"),
    ("preemptions", "Requests preempted so far (recomputed later for lack of KV blocks).", "preemptions"),
    # Prefix cache (0 when it is off); totals since the start, like preemptions.
    ("prefix_cache_queries", "Requests that looked up a cached prompt prefix.", "prefix_cache_queries"),
    ("prefix_cache_hits", "Lookups that found a cached prefix.", "prefix_cache_hits"),
    ("prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache.", "prefix_cache_hit_tokens"),
    ("prefix_cache_evicted_kv_blocks", "Cached KV blocks evicted to free memory.", "prefix_cache_evicted_blocks"),
    ("prefix_cache_evicted_snapshots", "Lightning-state snapshots evicted (budget, or with their block).",
     "prefix_cache_evicted_snapshots"),
    ("prefix_cache_snapshot_bytes", "Device memory of the cached lightning-state snapshots.",
     "prefix_cache_snapshot_bytes"),
    ("prefix_cache_host_snapshot_bytes", "Host memory of the snapshots spilled from the device.",
     "prefix_cache_host_snapshot_bytes"),
    ("prefix_cache_kv_bytes", "Memory of the KV blocks the prefix cache holds (part of the KV pool).",
     "prefix_cache_kv_bytes"),
)


class ServerMetrics:
    """Every metric the server exports. `engine_stats` returns the engine's latest `stats()` snapshot."""

    def __init__(self, engine_stats: Callable[[], dict[str, float]]) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(PREFIX + "requests_total", "HTTP requests to /v1 endpoints by endpoint and status code.",
                                ["endpoint", "status"], registry=reg)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens_total", "Prompt tokens of finished generation requests.",
                                     registry=reg)
        self.generation_tokens = Counter(PREFIX + "generation_tokens_total",
                                         "Tokens generated (all finished requests).", registry=reg)
        self.finished = Counter(PREFIX + "request_finished_total", "Engine requests finished, by finish reason.",
                                ["reason"], registry=reg)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds",
                              "From submitting a request to the engine until its first token.",
                              buckets=LATENCY_BUCKETS, registry=reg)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds",
                             "Time between successive outputs of one request, per token.",
                             buckets=LATENCY_BUCKETS, registry=reg)
        self.e2e = Histogram(PREFIX + "request_latency_seconds",
                             "From submitting a request to the engine until it finished.",
                             buckets=REQUEST_BUCKETS, registry=reg)
        for name, help_text, key in ENGINE_GAUGES:
            gauge = Gauge(PREFIX + name, help_text, registry=reg)
            gauge.set_function(lambda key=key: float(engine_stats().get(key, 0)))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type, in the format the scraper's Accept header asks for (the
        Prometheus text format by default, OpenMetrics when asked)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
