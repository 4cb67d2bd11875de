"""Timing and roofline helpers shared by the benchmark scripts (run on a GPU machine).

Method: median of many timed runs after a warm-up, device events (Triton's
do_bench), CUDA-graph replay for launch-bound steps, random data (never zeros), and the two ceilings — a
bf16 8192³ matmul and a large device-to-device copy — measured in the same process as the rows they judge.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def bench(fn: Callable[[], Any], warmup_ms: int = 25, rep_ms: int = 200) -> float:
    """Median milliseconds of fn() (device events, L2 flushed between runs by do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def bench_graph(fn: Callable[[], Any], replays: int = 200) -> float:
    """Median milliseconds of one fn() captured in a CUDA graph (no launch gaps: the decode-step setting).
    Each replay is timed on its own with events after an L2 flush; fn must be capturable (no host syncs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the graph: compiles kernels, allocates the pool
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(10):
        graph.replay()
    times = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")  # 5x the L2
    for _ in range(replays):
        flush.zero_()  # as in a real step, the other layers' data has evicted this one's from L2
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def roofline() -> dict[str, float]:
    """The two ceilings of this GPU, measured now: bf16 8192³ matmul TFLOP/s and device copy GB/s
    (bytes read + bytes written)."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: a @ b)
    tflops = 2 * n**3 / ms / 1e9
    del a, b
    src = torch.randn(2**28, device="cuda")  # 1 GiB fp32, 20x the L2
    dst = torch.empty_like(src)
    ms_copy = bench(lambda: dst.copy_(src))
    gbps = 2 * src.numel() * 4 / ms_copy / 1e6
    return {"matmul_bf16_tflops": round(tflops, 1), "copy_gbps": round(gbps, 1)}


class ModuleTimer:
    """Time spent inside labelled modules: device events (host clock on CPU) at the start and end of every call
    (forward hooks), summed under the module's label after one synchronisation at the end, so timing adds no host
    syncs to the run. Modules may nest (a decoder layer and its attention): the calls close in stack order."""

    def __init__(self, spans: Iterable[tuple[str, torch.nn.Module]]) -> None:
        self.marks: list[tuple[str, Any, Any]] = []
        self.open: list[int] = []
        self.handles = []
        for label, module in spans:
            self.handles.append(module.register_forward_pre_hook(lambda _m, _a, label=label: self._open(label)))
            self.handles.append(module.register_forward_hook(lambda _m, _a, _o: self._close()))

    @staticmethod
    def _stamp() -> Any:
        if not torch.cuda.is_available():
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _open(self, label: str) -> None:
        self.open.append(len(self.marks))
        self.marks.append((label, self._stamp(), None))

    def _close(self) -> None:
        i = self.open.pop()
        label, start, _ = self.marks[i]
        self.marks[i] = (label, start, self._stamp())

    def totals_s(self) -> dict[str, float]:
        """Seconds per label, summed over all calls so far."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for label, start, end in self.marks:
            dt = end - start if isinstance(start, float) else start.elapsed_time(end) / 1e3
            out[label] = out.get(label, 0.0) + dt
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def environment() -> dict[str, str]:
    import triton

    env = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, sms=str(props.multi_processor_count))
    for pkg in ("transformers", "fla"):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception:  # optional comparison packages
            env[pkg] = "absent"
    return env


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖, accumulated in fp64 over slices (a 512 K-token output is 34 GB in fp64)."""
    num = den = 0.0
    step = max(1, (1 << 26) // max(1, a[0].numel()))
    for i in range(0, a.shape[0], step):
        x, y = a[i:i + step].double(), ref[i:i + step].double()
        num += float((x - y).square().sum())
        den += float(y.square().sum())
    return (num / max(den, 1e-60)) ** 0.5


def lightning_inputs(n: int, heads: int, dim: int, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sequence's lightning prefill inputs, seeded by n: q, k, v [n, H, D] in the model's layout (bf16 strided
    views of one SiLU'd [n, H, 3D] projection) and an fp32 initial state [1, H, D, D]."""
    g = torch.Generator(device=device).manual_seed(n)
    proj = torch.randn(n, heads, 3 * dim, device=device, generator=g, dtype=torch.bfloat16)
    q, k, v = torch.nn.functional.silu(proj).split(dim, dim=-1)
    st0 = torch.randn(1, heads, dim, dim, device=device, generator=g) * 0.1
    return q, k, v, st0


def fla_chunk_simple_gla() -> Callable[..., Any] | None:
    """fla-core's chunk_simple_gla, or None where the (optional) wheel does not import."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as exc:
        print("fla unavailable:", exc)
        return None
    return chunk_simple_gla


def fla_lightning(chunk_gla: Callable[..., Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  decay: torch.Tensor, st0: torch.Tensor) -> Callable[[], Any]:
    """The same prefill as our kernel through fla's chunk_simple_gla (contiguous [1, n, H, D] copies made once,
    g_gamma = −decay per head, no query scaling): a call to time."""
    qc, kc, vc = (t.contiguous()[None] for t in (q, k, v))
    return lambda: chunk_gla(qc, kc, vc, g_gamma=-decay, scale=1.0, initial_state=st0, output_final_state=True)


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated q-th percentile (q in [0, 100]); nan for no data."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def write_results(name: str, sections: dict[str, list[dict[str, Any]]], meta: dict[str, Any],
                  results_dir: Path | None = None) -> list[Path]:
    """<results_dir, default bench/results>/<name>-<date>.json and .md (one Markdown table per section); copies go
    to $OUT when set (a folder the caller collects results from)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    payload = {"meta": meta, "sections": sections}
    md = [f"# {name} benchmark ({stamp})", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    for title, rows in sections.items():
        if not rows:
            continue
        cols = list(dict.fromkeys(k for row in rows for k in row))
        md += ["", f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
    text = {"json": json.dumps(payload, indent=1), "md": "\n".join(md) + "\n"}
    dirs = [results_dir or RESULTS] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    paths = []
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        for ext, body in text.items():
            path = d / f"{name}-{stamp}.{ext}"
            path.write_text(body)
            paths.append(path)
    return paths


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
