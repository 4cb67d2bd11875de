"""Prometheus metrics of the server, rendered by hand in the text exposition format (version 0.0.4).

Only counters, gauges and histograms are needed, so a few small classes replace a dependency. Updates come
from the event loop and the engine thread; each metric takes its own lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

PREFIX = "minimax01_"

# Latencies of a CPU tiny model (~ms) up to a real model under load (~s).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                                      0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0)
REQUEST_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: Labels = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt_value(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = PREFIX + name
        self.help = help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelled: bool = False) -> None:
        super().__init__(name, help_text)
        # An unlabelled counter exists (at 0) from the start; labelled ones get a series per label set seen.
        self._values: dict[Labels, float] = {} if labelled else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read at scrape time from `read` (so it can never go stale)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_text)
        self.read = read

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_fmt_value(self.read())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)  # per bucket (not cumulative)
        self._sum = 0.0
        self._n = 0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
                    break
            self._sum += value
            self._n += 1

    def render(self) -> list[str]:
        with self._lock:
            counts, total, n = list(self._counts), self._sum, self._n
        lines = self.header()
        cumulative = 0
        for bound, c in zip(self.buckets, counts):
            cumulative += c
            lines.append(f"{self.name}_bucket{_fmt_labels((), (('le', _fmt_value(bound)),))} {cumulative}")
        lines.append(f"{self.name}_sum {_fmt_value(total)}")
        lines.append(f"{self.name}_count {n}")
        return lines


class ServerMetrics:
    """Every metric the server exports. `engine_stats` returns the engine's latest `stats()` snapshot."""

    def __init__(self, engine_stats: Callable[[], dict[str, float]]) -> None:
        def stat(key: str) -> Callable[[], float]:
            return lambda: float(engine_stats().get(key, 0))

        self.requests = Counter("requests_total", "HTTP requests to /v1 endpoints by endpoint and status code.",
                                labelled=True)
        self.prompt_tokens = Counter("prompt_tokens_total", "Prompt tokens of finished generation requests.")
        self.generation_tokens = Counter("generation_tokens_total", "Tokens generated (all finished requests).")
        self.finished = Counter("request_finished_total", "Engine requests finished, by finish reason.", labelled=True)
        self.ttft = Histogram("time_to_first_token_seconds",
                              "From submitting a request to the engine until its first token.", LATENCY_BUCKETS)
        self.itl = Histogram("inter_token_latency_seconds",
                             "Time between successive outputs of one request, per token.", LATENCY_BUCKETS)
        self.e2e = Histogram("request_latency_seconds",
                             "From submitting a request to the engine until it finished.", REQUEST_BUCKETS)
        self.gauges = [
            Gauge("num_requests_waiting", "Requests queued for a slot (queue depth).", stat("num_waiting")),
            Gauge("num_requests_running", "Requests holding a slot (running batch size).", stat("num_running")),
            Gauge("free_slots", "Free sequence slots (lightning state) out of max_num_seqs.", stat("free_slots")),
            Gauge("num_slots", "Sequence slots in total (max_num_seqs).", stat("num_slots")),
            Gauge("free_kv_blocks", "Free paged KV-cache blocks.", stat("free_kv_blocks")),
            Gauge("num_kv_blocks", "Paged KV-cache blocks in total.", stat("num_kv_blocks")),
            Gauge("last_step_batch_tokens", "Tokens computed in the engine's last step.", stat("last_step_tokens")),
            Gauge("preemptions", "Requests preempted so far (recomputed later for lack of KV blocks).",
                  stat("preemptions")),
        ]

    def all(self) -> Iterable[_Metric]:
        return [self.requests, self.prompt_tokens, self.generation_tokens, self.finished,
                self.ttft, self.itl, self.e2e, *self.gauges]

    def render(self) -> str:
        return "\n".join(line for m in self.all() for line in m.render()) + "\n"
