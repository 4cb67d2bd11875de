"""Chunked-prefill attention of one real-dims softmax layer (64 query heads, 8 kv heads, D = 128, bf16, 64-token
blocks scattered over the pool): the Triton paged prefill kernel (`kernels/attention_prefill_triton.py`, a small
config sweep, best reported) against the model's previous path (gather the sequence's K/V through the block
table, then SDPA per kv head with a lower-right causal bias: `attention_ref.paged_attention_ref`) and against the
bf16 matmul peak measured in the same run.

Per context L in 32 K, 128 K, 512 K, 1 M:
- last chunk: the 8192 queries at the end of the context (the most expensive chunk of the prefill);
- whole prefill: L / 8192 chunks; the chunk ending at position e costs ≈ a + b·e, so chunks ending at a few
  positions are timed and the sum over all chunks is integrated by piecewise-linear interpolation.
FLOPs counted exactly: 4·D·H·Σ_i (visible keys of query i) (Q Kᵀ and P V, 2 FLOPs per multiply-add).
Error: ‖ours − gather+SDPA‖ / ‖gather+SDPA‖ and the max abs difference on the last chunk.

    PYTHONPATH=src python bench/attention_prefill.py            # one H200: about 4 minutes
    PYTHONPATH=src python bench/attention_prefill.py --smoke    # CPU, tiny shapes under the Triton interpreter
    PYTHONPATH=src python bench/attention_prefill.py --sweep    # the kernel's config sweep instead (its module)

Writes bench/results/attention-prefill-<date>.{json,md} (and copies under $OUT).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]
SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
from common import bench, environment, write_results  # noqa: E402

from minimax01.kernels import attention_prefill_triton as prefill  # noqa: E402
from minimax01.kernels.attention_ref import paged_attention_ref  # noqa: E402

Config = prefill.PrefillConfig
if SMOKE:
    H, KVH, D, BS, CHUNK = 4, 2, 16, 8, 24
    CONTEXTS = [48, 96]
    SWEEP = [Config(16, 16, 4, 1), Config(32, 16, 4, 1)]
    DTYPE, DEV = torch.float32, torch.device("cpu")
else:
    H, KVH, D, BS, CHUNK = 64, 8, 128, 64, 8192
    CONTEXTS = [32768, 131072, 524288, 1048576]
    # TMA variants last: were one to fault the device, the pointer-load rows of this context are saved already.
    SWEEP = [Config(128, 64, 8, 3), Config(64, 64, 4, 3), Config(128, 128, 8, 3), Config(64, 128, 4, 3),
             Config(128, 64, 8, 3, tma=True), Config(128, 64, 8, 4, tma=True), Config(64, 64, 4, 3, tma=True)]
    DTYPE, DEV = torch.bfloat16, torch.device("cuda")
PREFILL_POINTS = 5  # chunk end positions timed per context for the whole-prefill estimate
BUDGET_S = 240  # a section starts only while the run is younger than this (the 1 M section takes ~1.5 min)


def timed_ms(fn: Callable[[], Any]) -> float:
    """Median ms on the GPU (common.bench); wall time of one call on the CPU (smoke: checks the code runs)."""
    if DEV.type == "cuda":
        return bench(fn, warmup_ms=100, rep_ms=1000)  # ~50 calls at 32 K, 1 at 1 M (~0.7 s, steady)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def key_visits(n: int, L: int) -> int:
    """Σ over the chunk's n queries (positions L-n..L-1) of the keys each sees (position + 1)."""
    return n * (L - n) + n * (n + 1) // 2


def tflops(n: int, L: int, ms: float) -> float:
    return 4 * D * H * key_visits(n, L) / ms / 1e9


class Context:
    """One sequence of L tokens in a fragmented pool: its K/V, block table, and gathered-index of the old path."""

    def __init__(self, L: int, gen: torch.Generator) -> None:
        nblk = L // BS
        self.L = L
        self.k = torch.randn(nblk + 8, BS, KVH, D, device=DEV, dtype=DTYPE, generator=gen)
        self.v = torch.randn_like(self.k)
        perm = torch.randperm(nblk + 8, device=DEV, generator=gen)[:nblk].int()
        self.table = perm.view(1, nblk)
        self.slots_t = torch.zeros(1, dtype=torch.int64, device=DEV)
        self.q = torch.randn(CHUNK, H, D, device=DEV, dtype=DTYPE, generator=gen)
        self.scale = D ** -0.5

    def ours(self, end: int, config: prefill.PrefillConfig | None = None) -> torch.Tensor:
        """The chunk of CHUNK queries ending at position `end` (its context: keys 0..end-1)."""
        return prefill.prefill(self.q, self.k, self.v, self.table, self.slots_t, [0, CHUNK], [end], self.scale,
                               config=config)

    def old(self, end: int) -> torch.Tensor:
        return paged_attention_ref(self.q, self.k, self.v, self.table, [0], [0, CHUNK], [end], self.scale)


def whole_prefill_ms(chunk_ms: Callable[[int], float], L: int) -> tuple[float, list[int]]:
    """Σ over the chunks ending at CHUNK, 2·CHUNK, …, L of their time, interpolated linearly between the chunk
    ends actually timed (spaced over [CHUNK, L])."""
    ends = sorted({max(CHUNK, round(L * i / (PREFILL_POINTS - 1) / CHUNK) * CHUNK) for i in range(PREFILL_POINTS)})
    times = [chunk_ms(e) for e in ends]
    total = 0.0
    for e in range(CHUNK, L + 1, CHUNK):
        j = max(1, next((i for i, x in enumerate(ends) if x >= e), len(ends) - 1))
        lo, hi = ends[j - 1], ends[j]
        w = (e - lo) / (hi - lo) if hi > lo else 0.0
        total += times[j - 1] + w * (times[j] - times[j - 1])
    return total, ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="config sweep at 128 K and 1 M (attention_prefill_sweep)")
    if parser.parse_args().sweep:
        from attention_prefill_sweep import main as sweep

        sweep()
        return
    start = time.time()
    meta: dict[str, Any] = dict(environment(), heads=H, kv_heads=KVH, head_dim=D, block_size=BS, chunk=CHUNK,
                                dtype=str(DTYPE), default_config=str(prefill.config_for(D, DTYPE)))
    if DEV.type == "cuda":
        from common import roofline

        meta.update(roofline())
    peak = meta.get("matmul_bf16_tflops")
    sections: dict[str, list[dict[str, Any]]] = {"last chunk": [], "sweep": [], "whole prefill": []}

    def save() -> None:
        meta["run_s"] = round(time.time() - start, 1)
        write_results("attention-prefill" + ("-smoke" if SMOKE else ""), sections, meta)

    gen = torch.Generator(device=DEV).manual_seed(0)
    for L in CONTEXTS:
        if time.time() - start > BUDGET_S:
            meta.setdefault("skipped", []).append(L)
            continue
        t0 = time.time()
        ctx = Context(L, gen)
        best_ms, best = float("inf"), None
        for config in SWEEP:
            try:
                ms = timed_ms(lambda: ctx.ours(L, config))
            except Exception as e:  # a config this Triton cannot compile: recorded, not fatal
                sections["sweep"].append(dict(context=L, config=str(config), error=repr(e)[:200]))
                continue
            sections["sweep"].append(dict(context=L, config=str(config), ms=ms, tflops=tflops(CHUNK, L, ms)))
            save()
            if ms < best_ms:
                best_ms, best = ms, config
        out, ref = ctx.ours(L, best), ctx.old(L)
        diff = (out.float() - ref.float())
        err = float(diff.norm() / ref.float().norm())
        old_ms = timed_ms(lambda: ctx.old(L))
        row = dict(context=L, best_config=str(best), ours_ms=best_ms, ours_tflops=tflops(CHUNK, L, best_ms),
                   old_ms=old_ms, old_tflops=tflops(CHUNK, L, old_ms), speedup=old_ms / best_ms,
                   rel_err_vs_old=err, max_abs_err_vs_old=float(diff.abs().max()))
        if peak:
            row.update(ours_of_peak=row["ours_tflops"] / peak, old_of_peak=row["old_tflops"] / peak)
        sections["last chunk"].append(row)
        del out, ref, diff
        save()
        if time.time() - start <= BUDGET_S:
            flop = sum(4 * D * H * key_visits(CHUNK, e) for e in range(CHUNK, L + 1, CHUNK))
            ours_total, ends = whole_prefill_ms(lambda e: timed_ms(lambda: ctx.ours(e, best)), L)
            old_total, _ = whole_prefill_ms(lambda e: timed_ms(lambda: ctx.old(e)), L)
            prow = dict(context=L, chunks=L // CHUNK, timed_ends=" ".join(map(str, ends)), ours_s=ours_total / 1e3,
                        ours_tflops=flop / ours_total / 1e9, old_s=old_total / 1e3, old_tflops=flop / old_total / 1e9,
                        speedup=old_total / ours_total)
            if peak:
                prow.update(ours_of_peak=prow["ours_tflops"] / peak, old_of_peak=prow["old_tflops"] / peak)
            sections["whole prefill"].append(prow)
        row["case_s"] = round(time.time() - t0, 1)
        print(sections["last chunk"][-1], sections["whole prefill"][-1:], flush=True)
        save()
        del ctx
        if DEV.type == "cuda":
            torch.cuda.empty_cache()
    for path in write_results("attention-prefill" + ("-smoke" if SMOKE else ""), sections, meta):
        print(path)


if __name__ == "__main__":
    main()
