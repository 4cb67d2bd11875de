"""The row-invariant Triton GEMM of prefill steps (kernels/linear_triton.py) against cuBLAS (torch) at the model's
dense projection shapes (whole and one rank's shard at TP = 2 / 8), prefill chunk sizes: what exactness under
prefix caching costs. Also reports, per shape, whether cuBLAS itself summed rows the same way at other row counts.

    PYTHONPATH=src python bench/linear.py          # GPU machine: bench/results/linear-<date>.{json,md}
    PYTHONPATH=src python bench/linear.py --sweep  # tile configs of the Triton GEMM (linear-sweep-<date>): which
                                                   # to put in linear_triton.config_for
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "src"), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from common import bench, environment, roofline, write_results  # noqa: E402

from minimax01.kernels import linear_triton  # noqa: E402

# (name, out, in): Text-01's projections and their TP shards.
SHAPES = [("router", 32, 6144), ("k / v", 1024, 6144), ("q", 8192, 6144), ("lightning qkv", 24576, 6144),
          ("out (lightning) / o", 6144, 8192), ("lightning qkv TP=2", 12288, 6144), ("q TP=2", 4096, 6144),
          ("out TP=2", 6144, 4096), ("lightning qkv TP=8", 3072, 6144), ("out TP=8", 6144, 1024)]
ROWS = (512, 2048, 8192)


def cublas_row_invariant(x: torch.Tensor, w: torch.Tensor) -> bool:
    full = x @ w.t()
    return all(torch.equal(x[:m] @ w.t(), full[:m]) for m in (1, 3, 200, 1000))


# Tile configurations tried by --sweep (BK stays linear_triton.BK in all: a row's sums do not change with them).
SWEEP = [dict(BM=bm, BN=bn, GROUP_M=8, num_warps=w, num_stages=st)
         for bm, bn, w, st in [(64, 64, 4, 4), (64, 128, 4, 4), (128, 64, 4, 4), (128, 128, 4, 4), (128, 128, 8, 3),
                               (128, 128, 8, 4), (128, 256, 8, 3), (128, 256, 8, 4), (256, 128, 8, 3),
                               (64, 256, 8, 4), (128, 64, 8, 5)]]


def sweep() -> list[dict]:
    """Every SWEEP config at every shape, 8192 rows: time, and bitwise equality with the default config's output
    (a config that changed a row's sums would break prefix caching's exactness: it cannot be adopted)."""
    rows = []
    g = torch.Generator(device="cuda").manual_seed(1)
    for name, n, k in SHAPES:
        w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) * k**-0.5
        x = torch.randn(8192, k, device="cuda", generator=g, dtype=torch.bfloat16)
        ref = linear_triton.linear(x, w)
        cublas = bench(lambda: x @ w.t())
        for cfg in SWEEP:
            row = dict(shape=name, out=n, config=str(cfg), cublas_ms=cublas)
            try:
                row["same_bits"] = torch.equal(linear_triton.linear(x, w, dict(cfg)), ref)
                row["ms"] = bench(lambda: linear_triton.linear(x, w, dict(cfg)))
                row["over_cublas"] = row["ms"] / cublas
            except Exception as exc:  # out of shared memory on this GPU: recorded, the sweep goes on
                row["error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    t0 = time.time()
    roof = roofline()
    if "--sweep" in sys.argv:
        meta = {**environment(), **roof, "wall_s": round(time.time() - t0, 1)}
        write_results("linear-sweep", {"row-invariant GEMM tile configs, 8192 rows": sweep()}, meta)
        return
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for name, n, k in SHAPES:
        w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) * k**-0.5
        x = torch.randn(max(ROWS), k, device="cuda", generator=g, dtype=torch.bfloat16)
        invariant = cublas_row_invariant(x[:3000], w)
        for m in ROWS:
            xm = x[:m]
            flops = 2 * m * n * k
            cublas = bench(lambda: xm @ w.t())
            triton_ms = bench(lambda: linear_triton.linear(xm, w))
            err = ((linear_triton.linear(xm, w).float() - (xm @ w.t()).float()).abs().max()).item()
            rows.append(dict(shape=name, out=n, inp=k, rows=m, cublas_ms=cublas, triton_ms=triton_ms,
                             triton_over_cublas=triton_ms / cublas, cublas_tflops=flops / cublas / 1e9,
                             triton_tflops=flops / triton_ms / 1e9, max_abs_diff=err,
                             cublas_rows_invariant=invariant))
            print(rows[-1], flush=True)
    meta = {**environment(), **roof, "wall_s": round(time.time() - t0, 1),
            "cublas_rows_invariant": "x[:m] @ Wᵀ equal to the first m rows of x[:3000] @ Wᵀ for m in 1, 3, 200, 1000"}
    for p in write_results("linear", {"dense projections, bf16: row-invariant Triton GEMM vs cuBLAS": rows}, meta):
        print("wrote", p)


if __name__ == "__main__":
    main()
