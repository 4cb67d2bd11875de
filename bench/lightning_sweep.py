"""Launch sweep of the single-walk Triton lightning prefill (kernels/lightning_triton.py): value block, warps,
load stages and chunk length, timed at batch 1 against the HBM floor (read q, k, v and write o once, at the copy
bandwidth measured in the same run), next to fla-core's chunk_simple_gla when it imports. Errors of every config
at the first length (32 K): o and state against the fp64 reference and against the default config
(`prefill_config`). Prints the winner (least ms summed over the lengths among the configs within the GPU test's
tolerance: 2x the bf16 torch reference's own error + 1e-4, tests/test_kernels.py) as a ready-to-paste
`prefill_config` return value.

    PYTHONPATH=src python bench/lightning_sweep.py [--budget-s 360]   # one H200
    python bench/lightning_sweep.py --smoke                            # tiny shapes on the CPU (interpreter), no file

A `decay_out` kernel variant (the decays moved onto narrower tiles) was swept too, doubling the launches to 34
(130 s on an H200), and removed: it lost to the default launch (bench/results/lightning-sweep-2026-11-30.md,
docs/kernels.md). Per config and length: the median of Triton's do_bench (about 0.2 s of calls; 16 ms per call
at 512 K), plus the fp64 reference at 32 K. Configs not reached within --budget-s seconds are skipped and
reported.

Writes bench/results/lightning-sweep-<date>.{json,md} (and copies under $OUT); --smoke writes nothing.
A config that fails to compile (e.g. shared memory) is reported (NaN + message) and the sweep goes on.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import torch  # noqa: E402
from common import (  # noqa: E402
    bench,
    environment,
    fla_chunk_simple_gla,
    fla_lightning,
    lightning_inputs,
    rel_err,
    roofline,
    write_results,
)

from minimax01.kernels import lightning_triton as lt  # noqa: E402
from minimax01.kernels.lightning_ref import layer_decay_rates, lightning_prefill_ref  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
H, D = (2, 32) if SMOKE else (64, 128)
LAYER = 40  # a middle lightning layer of the 80 (as bench/prefill_kernels.py)
LENGTHS = (200,) if SMOKE else (32768, 131072, 524288)  # errors at the first
TOL_FACTOR = 2  # tests/test_kernels.py BF16_FACTOR


def configs() -> list[dict]:
    """17 launches. Pruned: BE = 32 only with 4 warps and BE = 128 only with 8 (the [128, 128] fp32 state alone
    is 128 registers per thread over 128 threads); C = 128 only with 2 stages, 3 at BE = 32: compiled for sm_90
    with Triton 3.6, C = 128 at 3 stages needs 240-320 KiB of shared memory at BE >= 64, more than the 227 KiB a
    block may have; all 17 launches below fit (at most 224 KiB)."""
    if SMOKE:  # the interpreter ignores warps and stages; the value blocks and chunks still change the code
        return [dict(block_e=be, num_warps=4, num_stages=3, chunk=c) for be, c in [(16, 64), (32, 128)]]
    out = []
    for be, warps in [(32, 4), (64, 4), (64, 8), (128, 8)]:
        for chunk, stages_list in [(64, (2, 3, 4)), (128, (2, 3) if be == 32 else (2,))]:
            for stages in stages_list:
                out.append(dict(block_e=be, num_warps=warps, num_stages=stages, chunk=chunk))
    return out


def name(cfg: dict) -> str:
    return f"be{cfg['block_e']}-w{cfg['num_warps']}-s{cfg['num_stages']}-c{cfg['chunk']}"


def timed(fn) -> float:
    """ms (NaN in smoke mode: the interpreter's timings mean nothing)."""
    if SMOKE:
        fn()
        return float("nan")
    return bench(fn)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--budget-s", type=float, default=360.0,
                    help="configs not yet timed when this much wall time has passed are skipped (reported)")
    args = ap.parse_args()
    t0 = time.time()
    roof = {"matmul_bf16_tflops": float("nan"), "copy_gbps": 3000.0} if SMOKE else roofline()
    print("roofline", roof, flush=True)
    chunk_gla = fla_chunk_simple_gla()
    decay = layer_decay_rates(H, LAYER, 80).to(DEV, torch.float32)
    slot = torch.zeros(1, dtype=torch.int64, device=DEV)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if not SMOKE else 132
    cfgs = configs()
    default = lt.prefill_config(H, D, LENGTHS[0], LENGTHS[0], sms)
    rows = {name(c): dict(config=name(c)) for c in cfgs}
    failed: dict[str, str] = {}
    lengths_rows = []
    tol: dict[str, float] = {}

    for n in LENGTHS:
        q, k, v, st0 = lightning_inputs(n, H, D, DEV)
        cu = torch.tensor([0, n], dtype=torch.int32, device=DEV)
        floor_ms = 4 * n * H * D * 2 / (roof["copy_gbps"] * 1e6)

        def walk(st, **cfg):
            return lt.prefill(q, k, v, decay, cu, st, slot, max_len=n, **cfg)

        info = dict(n=n, hbm_floor_ms=floor_ms)
        if n == LENGTHS[0]:  # errors: fp64 reference (4 fp64 copies of q, k, v, o: 4 GB at 32 K), default config
            o64, s64 = lightning_prefill_ref(*[t.transpose(0, 1).double() for t in (q, k, v)], decay.double(),
                                             st0[0].double())
            o64 = o64.transpose(0, 1)
            o16, s16 = lightning_prefill_ref(*[t.transpose(0, 1) for t in (q, k, v)], decay, st0[0])
            info.update(err_bf16_ref_o=rel_err(o16.transpose(0, 1), o64), err_bf16_ref_state=rel_err(s16, s64))
            tol = dict(o=TOL_FACTOR * info["err_bf16_ref_o"] + 1e-4,
                       state=TOL_FACTOR * info["err_bf16_ref_state"] + 1e-4)
            del o16, s16
            st_def = st0.clone()
            o_def = walk(st_def, **default)
            info.update(err_default_o=rel_err(o_def, o64), err_default_state=rel_err(st_def[0], s64))
        if chunk_gla is not None:
            try:
                info["fla_ms"] = timed(fla_lightning(chunk_gla, q, k, v, decay, st0))
                info["fla_frac_of_floor"] = floor_ms / info["fla_ms"]
            except Exception as exc:
                print("fla failed:", type(exc).__name__, str(exc)[:300], flush=True)
        info["default_config"] = name(default)
        lengths_rows.append(info)
        print(info, flush=True)

        for cfg in cfgs:
            key, row = name(cfg), rows[name(cfg)]
            row.update((k_, v_) for k_, v_ in cfg.items())
            ms = float("nan")
            if key in failed:
                pass
            elif time.time() - t0 > args.budget_s:
                failed[key] = f"skipped: past the {args.budget_s:.0f} s budget"
            else:
                try:
                    if n == LENGTHS[0]:
                        st = st0.clone()
                        o = walk(st, **cfg)
                        row.update(err_o=rel_err(o, o64), err_state=rel_err(st[0], s64),
                                   err_o_vs_default=rel_err(o, o_def), err_state_vs_default=rel_err(st[0], st_def[0]))
                        del o
                    ms = timed(lambda: walk(st0.clone(), **cfg))
                except Exception as exc:  # a launch that does not compile here (shared memory, registers)
                    failed[key] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    if not SMOKE:
                        torch.cuda.synchronize()
            row[f"ms_{n}"] = ms
            row[f"frac_{n}"] = floor_ms / ms
            if key in failed:
                row["error"] = failed[key]
            errs = f", err o {row['err_o']:.2e} state {row['err_state']:.2e}" if "err_o" in row else ""
            print(f"[{time.time() - t0:5.0f} s] n={n} {key}: {ms:.3f} ms, {floor_ms / ms:.3f} of floor{errs}"
                  + (f"  ({failed[key]})" if key in failed else ""), flush=True)
        if n == LENGTHS[0]:
            del o64, s64, o_def
        del q, k, v
        if not SMOKE:
            torch.cuda.empty_cache()

    table = list(rows.values())
    for row in table:
        row["sum_ms"] = sum(row.get(f"ms_{n}", math.nan) for n in LENGTHS)
        row["within_tol"] = bool(row.get("err_o", math.inf) <= tol["o"]
                                 and row.get("err_state", math.inf) <= tol["state"])
    ok = [r for r in table if r["within_tol"] and "error" not in r]
    # No timings in smoke mode: the first config within tolerance stands in.
    winner = min(ok, key=lambda r: math.inf if math.isnan(r["sum_ms"]) else r["sum_ms"], default=None)
    def_row = rows.get(name(default))
    print("\n# tolerance (2x the bf16 reference's error + 1e-4):", tol)
    print(f"# default {name(default)}: summed ms {def_row['sum_ms'] if def_row else math.nan:.3f}")
    if winner is None:
        print("# no config within tolerance: no winner")
    else:
        speedup = def_row["sum_ms"] / winner["sum_ms"] if def_row else math.nan
        print(f"# winner {winner['config']}: summed ms {winner['sum_ms']:.3f} over n = {LENGTHS} "
              f"({speedup:.3f}x the default); "
              "paste as prefill_config's batch-1 return value:")
        print(f"    return dict(block_e={winner['block_e']}, chunk={winner['chunk']}, num_warps={winner['num_warps']}, "
              f"num_stages={winner['num_stages']})")
    meta = {**environment(), **roof, "wall_s": round(time.time() - t0, 1), "tolerance": tol,
            "winner": winner["config"] if winner else None, "default": name(default)}
    sections = {f"lengths, batch 1, {H} heads x {D}, bf16 in, fp32 state (layer {LAYER} of 80)": lengths_rows,
                "walk configs (errors at the first length)": table}
    if not SMOKE:
        for p in write_results("lightning-sweep", sections, meta):
            print("wrote", p)
    print(f"[sweep: {time.time() - t0:.0f} s]")


if __name__ == "__main__":
    main()
