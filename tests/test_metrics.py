"""/metrics through prometheus_client: every metric name, type and label the hand-written renderer exported is
still there (and the prefix cache's), values follow the updates, gauges read the engine at scrape time, and OpenMetrics is negotiated."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from minimax01.server.metrics import ServerMetrics

# (family name as the parser reports it, type): the names the server exported before prometheus_client.
EXPECTED = {
    "minimax01_requests": "counter", "minimax01_prompt_tokens": "counter",
    "minimax01_generation_tokens": "counter", "minimax01_request_finished": "counter",
    "minimax01_time_to_first_token_seconds": "histogram", "minimax01_inter_token_latency_seconds": "histogram",
    "minimax01_request_latency_seconds": "histogram", "minimax01_num_requests_waiting": "gauge",
    "minimax01_num_requests_running": "gauge", "minimax01_free_slots": "gauge", "minimax01_num_slots": "gauge",
    "minimax01_free_kv_blocks": "gauge", "minimax01_num_kv_blocks": "gauge",
    "minimax01_last_step_batch_tokens": "gauge", "minimax01_preemptions": "gauge",
    "minimax01_prefix_cache_queries": "gauge", "minimax01_prefix_cache_hits": "gauge",
    "minimax01_prefix_cache_hit_tokens": "gauge", "minimax01_prefix_cache_evicted_kv_blocks": "gauge",
    "minimax01_prefix_cache_evicted_snapshots": "gauge", "minimax01_prefix_cache_snapshot_bytes": "gauge",
    "minimax01_prefix_cache_kv_bytes": "gauge", "minimax01_prefix_cache_host_snapshot_bytes": "gauge",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_names_types_labels_and_values() -> None:
    stats = {"free_slots": 3.0, "num_slots": 8.0}
    m = ServerMetrics(lambda: stats)
    m.requests.labels(endpoint="/v1/completions", status="200").inc()
    m.finished.labels(reason="stop").inc(2)
    m.prompt_tokens.inc(5)
    m.ttft.observe(0.02)
    body, content_type = m.render(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    text = body.decode()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert {name: families.get(name) for name in EXPECTED} == EXPECTED
    got = samples(text)
    assert got[("minimax01_requests_total", (("endpoint", "/v1/completions"), ("status", "200")))] == 1
    assert got[("minimax01_request_finished_total", (("reason", "stop"),))] == 2
    assert got[("minimax01_prompt_tokens_total", ())] == 5 and got[("minimax01_generation_tokens_total", ())] == 0
    assert got[("minimax01_time_to_first_token_seconds_bucket", (("le", "0.025"),))] == 1
    assert got[("minimax01_time_to_first_token_seconds_bucket", (("le", "0.01"),))] == 0
    assert got[("minimax01_time_to_first_token_seconds_count", ())] == 1
    assert got[("minimax01_free_slots", ())] == 3 and got[("minimax01_num_kv_blocks", ())] == 0
    stats["free_slots"] = 1.0  # gauges are read when scraped
    assert samples(m.render(None)[0].decode())[("minimax01_free_slots", ())] == 1


def test_openmetrics_when_asked_and_registries_apart() -> None:
    first, second = ServerMetrics(dict), ServerMetrics(dict)  # two servers in one process do not clash
    first.prompt_tokens.inc(7)
    body, content_type = first.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.decode().endswith("# EOF\n")
    assert samples(second.render(None)[0].decode())[("minimax01_prompt_tokens_total", ())] == 0
