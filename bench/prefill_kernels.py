"""Prefill kernels side by side (issue 15): lightning prefill (single walk vs segmented vs fla-core) against the
HBM floor, and the MoE prefill implementations against the matmul peak, both ceilings measured in this run.
Prints the MoE choice table in the form kernels/moe_prefill_choice.py takes (paste it into MEASURED).

    PYTHONPATH=src python bench/prefill_kernels.py [--only lightning,moe]   # one H200: about 4 minutes
    python bench/prefill_kernels.py --smoke                                  # tiny shapes on the CPU

Writes bench/results/prefill-kernels-<date>.{json,md} (and copies under $OUT). fla-core is optional.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import bench, environment, rel_err, roofline, write_results  # noqa: E402

import moe_per_expert  # noqa: E402

from minimax01.kernels import lightning_segmented, moe_tma_triton, moe_triton  # noqa: E402
from minimax01.kernels import lightning_triton as lt  # noqa: E402
from minimax01.kernels.dispatch import grouped_mm_available  # noqa: E402
from minimax01.kernels.lightning_ref import layer_decay_rates, lightning_prefill_ref  # noqa: E402
from minimax01.kernels.moe_prefill_choice import IMPLEMENTATIONS  # noqa: E402
from minimax01.kernels.moe_ref import experts_ref, route_ref  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
H, D = (2, 16) if SMOKE else (64, 128)
LAYER = 40  # a middle lightning layer of the 80
LENGTHS = (600,) if SMOKE else (4096, 32768, 131072, 524288)
SEGMENTS = (256,) if SMOKE else (1024, 2048, 4096, 8192, 16384)
E, HID, INTER, TOPK = (4, 64, 96, 2) if SMOKE else (32, 6144, 9216, 2)
TOKENS = (40,) if SMOKE else (512, 1024, 2048, 4096, 8192, 16384)
# Tile configurations of the grouped Triton kernels tried besides their own choice (moe_triton._config), at the
# token counts where the choice is between the compute-bound paths.
TRITON_SWEEP = [dict(BM=128, BN=256, BK=64, GROUP_M=8, num_warps=8, num_stages=3),
                dict(BM=128, BN=128, BK=64, GROUP_M=16, num_warps=8, num_stages=4),
                dict(BM=64, BN=256, BK=64, GROUP_M=8, num_warps=8, num_stages=4),
                dict(BM=128, BN=128, BK=128, GROUP_M=8, num_warps=8, num_stages=2)]
SWEEP_TOKENS = (40,) if SMOKE else (2048, 4096, 16384)
# Tile configurations of the persistent TMA kernels (moe_tma_triton; their fixed choice is config_for the shape),
# tried at TMA_SWEEP_TOKENS. Smoke: the test shape's own tiles (its dims take no larger ones).
_TMA = moe_tma_triton.config_for(HID, INTER)
TMA_SWEEP = [_TMA] if SMOKE else [
    _TMA,
    dict(_TMA, flatten=True),
    dict(_TMA, num_stages=4),
    dict(_TMA, BM=64, num_warps=4, num_stages=4),
    dict(_TMA, tail=True),  # an expert's last block of ≤ BM/2 rows as a half-height tile
    dict(_TMA, tma=False),  # the same persistent kernels with pointer loads
]
TMA_SWEEP_TOKENS = (40,) if SMOKE else (4096, 16384)
# Row invariance of the TMA path on the GPU: the first INVARIANT_ROWS of INVARIANT_TOKENS tokens on their own.
INVARIANT_TOKENS, INVARIANT_ROWS = (40, 10) if SMOKE else (4096, 1000)


def timed(fn) -> float:
    """ms; NaN in smoke mode (the interpreter's timings mean nothing) and where fn fails (reported)."""
    try:
        if SMOKE:
            fn()
            return float("nan")
        return bench(fn)
    except Exception as exc:
        print("timing failed:", type(exc).__name__, str(exc)[:300], flush=True)
        torch.cuda.synchronize() if not SMOKE else None
        return float("nan")


def fla_chunk_simple_gla():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as exc:  # the fla-core wheel is optional
        print("fla unavailable:", exc)
        return None
    return chunk_simple_gla


# ------------------------------------------------------------------------------------------- lightning


def lightning_section(roof: dict, rows: dict) -> None:
    chunk_gla = fla_chunk_simple_gla()
    decay = layer_decay_rates(H, LAYER, 80).to(DEV, torch.float32)
    slot = torch.zeros(1, dtype=torch.int64, device=DEV)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if not SMOKE else 132

    def walk(q, k, v, st):
        return lt.prefill(q, k, v, decay, torch.tensor([0, q.shape[0]], dtype=torch.int32, device=DEV), st, slot)

    def segmented(q, k, v, st, segment=None):
        return lightning_segmented.prefill_segmented(q, k, v, decay, [0, q.shape[0]], st, slot, segment=segment)

    table = []
    for n in LENGTHS:
        g = torch.Generator(device=DEV).manual_seed(n)
        # the model's layout: bf16 strided views of one SiLU'd [n, H, 3D] projection
        q, k, v = F.silu(torch.randn(n, H, 3 * D, device=DEV, generator=g, dtype=torch.bfloat16)).split(D, dim=-1)
        st0 = torch.randn(1, H, D, D, device=DEV, generator=g) * 0.1
        floor_ms = 4 * n * H * D * 2 / (roof["copy_gbps"] * 1e6)  # read q, k, v and write o once
        auto_segment = lightning_segmented.segment_length(n, H, sms)
        row = dict(n=n, hbm_floor_ms=floor_ms, auto_segment=auto_segment)
        st_walk, st_seg = st0.clone(), st0.clone()
        o_walk, o_seg = walk(q, k, v, st_walk), segmented(q, k, v, st_seg)
        if n <= 32768:  # the fp64 reference (4 fp64 copies of q, k, v, o: 4 GB at 32 K)
            o64, s64 = lightning_prefill_ref(*[t.transpose(0, 1).double() for t in (q, k, v)], decay.double(),
                                             st0[0].double())
            o64 = o64.transpose(0, 1)
            row.update(err_walk_o=rel_err(o_walk, o64), err_walk_state=rel_err(st_walk[0], s64))
        else:  # the single walk is checked against the reference at the shorter lengths
            o64, s64 = o_walk, st_walk[0]
        row.update(err_segmented_o=rel_err(o_seg, o64), err_segmented_state=rel_err(st_seg[0], s64))
        del o_walk, o_seg, o64, s64
        row["walk_ms"] = timed(lambda: walk(q, k, v, st0.clone()))
        row["segmented_auto_ms"] = timed(lambda: segmented(q, k, v, st0.clone()))
        for segment in SEGMENTS:
            if segment < n:
                row[f"segmented_{segment}_ms"] = timed(lambda: segmented(q, k, v, st0.clone(), segment))
        if chunk_gla is not None:
            qc, kc, vc = (t.contiguous()[None] for t in (q, k, v))
            row["fla_ms"] = timed(lambda: chunk_gla(qc, kc, vc, g_gamma=-decay, scale=1.0,
                                                    initial_state=st0, output_final_state=True))
            del qc, kc, vc
        seg_times = {key: val for key, val in row.items() if key.startswith("segmented_") and not math.isnan(val)}
        best_key = min(seg_times, key=seg_times.get, default=None)
        if best_key:
            row["best_segmented"] = best_key
            row["best_segmented_frac_of_floor"] = floor_ms / seg_times[best_key]
        row["walk_frac_of_floor"] = floor_ms / row["walk_ms"]
        row["auto_frac_of_floor"] = floor_ms / row["segmented_auto_ms"]
        if "fla_ms" in row:
            row["auto_speedup_vs_fla"] = row["fla_ms"] / row["segmented_auto_ms"]
        table.append(row)
        print(row, flush=True)
        torch.cuda.empty_cache() if not SMOKE else None
    rows[f"lightning prefill, batch 1, {H} heads x {D}, bf16 in, fp32 state"] = table
    wins = [r["n"] for r in table if r["segmented_auto_ms"] < r["walk_ms"]]  # NaN compares false
    print("\n# dispatch.LIGHTNING_SEGMENTED_MIN_LEN (shortest measured length from which the automatic segment "
          "size beats the single walk; None: it never did):", min(wins, default=None))


# ------------------------------------------------------------------------------------------- MoE


def moe_section(roof: dict, rows: dict) -> None:
    g = torch.Generator(device=DEV).manual_seed(0)
    w13 = torch.randn(E, 2 * INTER, HID, device=DEV, generator=g, dtype=torch.bfloat16) * HID**-0.5
    w2 = torch.randn(E, HID, INTER, device=DEV, generator=g, dtype=torch.bfloat16) * INTER**-0.5
    gate = torch.randn(E, HID, device=DEV, generator=g, dtype=torch.bfloat16) * HID**-0.5
    paths = {"grouped": moe_triton.triton_experts, "per_expert": moe_per_expert.per_expert_experts}
    if grouped_mm_available(DEV):
        paths["grouped_mm"] = moe_triton.grouped_mm_experts
    paths["grouped_tma"] = moe_tma_triton.tma_experts
    table = []
    for t in TOKENS:
        x = torch.randn(t, HID, device=DEV, generator=g, dtype=torch.bfloat16)
        w, ids = route_ref(x @ gate.t(), TOPK, x.dtype)
        flops = 2 * t * TOPK * 3 * HID * INTER
        row = dict(tokens=t, matmul_floor_ms=flops / (roof["matmul_bf16_tflops"] * 1e9))
        if t == TOKENS[0]:  # correctness once, against the fp32 reference on the same bf16 inputs
            ref = experts_ref(x.float(), w.float(), ids, w13.float(), w2.float())
            for name, fn in paths.items():
                try:
                    row[f"err_{name}"] = rel_err(fn(x, w, ids, w13, w2), ref)
                except Exception as exc:  # a kernel that does not compile here costs its column only
                    if SMOKE:
                        raise
                    print(f"{name} failed:", type(exc).__name__, str(exc)[:300], flush=True)
                    row[f"err_{name}"] = float("nan")
            del ref
        for name, fn in paths.items():
            row[f"{name}_ms"] = ms = timed(lambda: fn(x, w, ids, w13, w2))
            row[f"{name}_tflops"] = flops / ms / 1e9
        if t in SWEEP_TOKENS:  # reported only: phase 2 may adopt a config that wins into moe_triton._config
            sweep = {str(cfg): timed(lambda: moe_triton.triton_experts(x, w, ids, w13, w2, dict(cfg)))
                     for cfg in TRITON_SWEEP}
            best_cfg = min(sweep, key=lambda c: sweep[c] if not math.isnan(sweep[c]) else math.inf)
            row.update(grouped_sweep_best_ms=sweep[best_cfg], grouped_sweep_best_cfg=best_cfg)
        if t in TMA_SWEEP_TOKENS:  # reported only: a config that wins goes into moe_tma_triton.config_for
            sweep = {str(cfg): timed(lambda: moe_tma_triton.tma_experts(x, w, ids, w13, w2, dict(cfg)))
                     for cfg in TMA_SWEEP}
            print("grouped_tma sweep (ms):", sweep, flush=True)
            best_cfg = min(sweep, key=lambda c: sweep[c] if not math.isnan(sweep[c]) else math.inf)
            row.update(grouped_tma_sweep_best_ms=sweep[best_cfg], grouped_tma_sweep_best_cfg=best_cfg,
                       grouped_tma_sweep_best_tflops=flops / sweep[best_cfg] / 1e9)
        if t == INVARIANT_TOKENS:  # bitwise: the first rows alone vs the same rows among all (same routing)
            n = INVARIANT_ROWS
            for col, cfg in (("row_invariant_grouped_tma", _TMA), ("row_invariant_grouped_tma_tail",
                                                                     dict(_TMA, tail=True))):
                try:
                    full = moe_tma_triton.tma_experts(x, w, ids, w13, w2, cfg)
                    row[col] = bool(torch.equal(moe_tma_triton.tma_experts(x[:n], w[:n], ids[:n], w13, w2, cfg),
                                                full[:n]))
                except Exception as exc:
                    if SMOKE:
                        raise
                    print(col, "failed:", type(exc).__name__, str(exc)[:300], flush=True)
        times = {name: row[f"{name}_ms"] for name in paths if not math.isnan(row.get(f"{name}_ms", math.nan))}
        if times:
            best = min(times, key=times.get)
            row.update(best=best, best_frac_of_peak=row["matmul_floor_ms"] / times[best])
        table.append(row)
        print(row, flush=True)
    rows[f"MoE experts, {E} experts {HID}->{INTER}, top-{TOPK}, bf16 (router excluded)"] = table
    # The engine runs one implementation for prefill chunks of every length (moe_prefill_choice.py says why):
    # the candidate with the least time summed over the chunk sizes (long chunks weigh most, as in a prefill).
    # A path that failed (NaN) never wins; in smoke mode (no timings) the first candidate stands in.
    totals = {name: sum(r[f"{name}_ms"] for r in table) for name in IMPLEMENTATIONS if name in paths}
    best = min(totals, key=lambda name: math.inf if math.isnan(totals[name]) else totals[name])
    gpu = torch.cuda.get_device_name(0) if not SMOKE else "cpu"
    print("\n# summed ms over the chunk sizes:", totals)
    print("# paste into kernels/moe_prefill_choice.py MEASURED:")
    print(f"    ({gpu!r}, {E}, {HID}, {INTER}, {TOPK}): {best!r},")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="lightning,moe")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    roof = {"matmul_bf16_tflops": float("nan"), "copy_gbps": 3000.0} if SMOKE else roofline()
    print("roofline", roof, flush=True)
    rows: dict = {}
    sections = {"lightning": lightning_section, "moe": moe_section}
    with torch.inference_mode():
        for name in args.only.split(","):
            start = time.time()
            try:  # one failing section (a kernel that does not compile here) does not cost the other
                sections[name](roof, rows)
            except Exception:
                if SMOKE:
                    raise
                traceback.print_exc()
            print(f"[{name}: {time.time() - start:.0f} s]", flush=True)
    meta = {**environment(), **roof, "wall_s": round(time.time() - t0, 1)}
    if not SMOKE:
        for p in write_results("prefill-kernels", rows, meta):
            print("wrote", p)


if __name__ == "__main__":
    main()
