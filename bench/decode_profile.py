"""Where the GPU time of a CUDA-graph decode step goes, on 1 and N GPUs: the kernels of rank 0's graph replays
under torch.profiler (CUPTI traces the kernels inside a graph), grouped into NCCL all-reduces, GEMV/GEMM-like
work and the rest, next to the step's GPU span. bench/decode_step.py measured that the batch-1 span does not
shrink from 1 to 2 GPUs; this says whether the all-reduces (waiting for the other rank) or the kernels take it.

Same model as bench/decode_step.py (Text-01 dims, one period of 8 layers, real lm_head, random bf16 weights).

    PYTHONPATH=src python bench/decode_profile.py [--tp 2] [--batches 1 64] [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_results  # noqa: E402
from decode_step import engine_with_requests, with_layout  # noqa: E402

from minimax01.config import MiniMaxConfig  # noqa: E402


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    if "nccl" in name:
        return "NCCL all-reduce"
    if any(k in name for k in ("gemm", "gemv", "matmul", "_mm", "moe", "w8a16", "cutlass", "sm90_xmma", "nvjet")):
        return "matmul / GEMV / experts"
    if any(k in name for k in ("paged", "lightning", "decode")):
        return "attention (lightning / paged)"
    return "other (norms, RoPE, elementwise, sampling)"


def profile_batch(model, batch: int, prompt_len: int, steps: int) -> list[dict]:
    """Kernel time by kind over `steps` pure decode steps of `batch` sequences (rank 0's GPU)."""
    engine, _ = engine_with_requests(model, batch, prompt_len, 2 * steps + batch + 2)
    for _ in range(batch + 4):  # prefill every prompt, then a few decode steps (warm)
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps
    totals: dict[str, float] = {}
    top: list[tuple[float, str, int]] = []
    for ev in prof.key_averages():
        # Kernels and device copies: events that run on the device (CPU-side op events carry their children's
        # device time too, and would count it twice).
        gpu_us = getattr(ev, "self_device_time_total", 0.0)
        if "CUDA" not in str(getattr(ev, "device_type", "")) or gpu_us <= 0:
            continue
        totals[kind_of(ev.key)] = totals.get(kind_of(ev.key), 0.0) + gpu_us
        top.append((gpu_us, ev.key, ev.count))
    while engine.has_unfinished():
        engine.step()
    rows = [{"batch": batch, "kind": k, "gpu_ms_per_step": us / steps / 1e3} for k, us in sorted(totals.items())]
    rows.append({"batch": batch, "kind": "sum of kernels", "gpu_ms_per_step": sum(totals.values()) / steps / 1e3})
    rows.append({"batch": batch, "kind": "engine step wall", "gpu_ms_per_step": wall * 1e3})
    for us, key, count in sorted(top, reverse=True)[:8]:
        rows.append({"batch": batch, "kind": f"top kernel: {key[:70]}", "gpu_ms_per_step": us / steps / 1e3,
                     "calls_per_step": count / steps})
    return rows


def run(tp: int, args: argparse.Namespace, config_dir: Path) -> list[dict]:
    def lead(model) -> list[dict]:
        out = []
        for b in args.batches:
            out += [{"gpus": tp, **r} for r in profile_batch(model, b, args.prompt_len, args.steps)]
            print("\n".join(str(r) for r in out[-12:]), flush=True)
        return out

    return with_layout(tp, config_dir, lead)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--only", type=int, help=argparse.SUPPRESS)  # internal: one layout in this fresh process
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    config_dir = Path(tempfile.mkdtemp(prefix="minimax01-profile-"))
    MiniMaxConfig.preset_slice("text-01", args.layers).save_pretrained(config_dir)
    if args.only:
        torch.save(run(args.only, args, config_dir), args.save)
        return
    import subprocess

    rows, t0 = [], time.time()
    for tp in sorted({1, args.tp}):  # each layout in a fresh process (one process group per process)
        with tempfile.TemporaryDirectory() as d:
            save = Path(d) / "rows.pt"
            subprocess.run([sys.executable, __file__, "--only", str(tp), "--save", str(save), "--batches",
                            *map(str, args.batches), "--steps", str(args.steps), "--layers", str(args.layers),
                            "--prompt-len", str(args.prompt_len)], check=True, timeout=300)
            rows += torch.load(save)
    meta = {**environment(), "model": f"random text-01 dims, {args.layers} layers, bf16, real lm_head, CUDA graphs",
            "context": args.prompt_len, "steps_profiled": args.steps, "wall_s": round(time.time() - t0, 1),
            "note": "kernel times of rank 0 only; NCCL kernel time includes waiting for the other rank"}
    for p in write_results("decode-profile", {"GPU time per decode step by kernel kind (rank 0)": rows}, meta):
        print("wrote", p)


if __name__ == "__main__":
    main()
