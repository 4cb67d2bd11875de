"""Kernel benchmarks, side by side in one process (issue 9): lightning prefill / decode vs fla-core and torch,
MoE experts vs transformers' MiniMaxSparseMoeBlock (grouped_mm), the fused small ops (RMSNorm, norm + gate,
RoPE, SiLU·mul) vs their torch twins, each against the roofline measured here.

    PYTHONPATH=src python bench/kernels.py [--only prefill,decode,moe,fused] [--sweep]

Writes bench/results/kernels-<date>.{json,md} (and copies under $OUT). `--smoke` runs tiny shapes on the
CPU under TRITON_INTERPRET=1 to check the script itself (no timings).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import bench, bench_graph, environment, rel_err, roofline, write_results  # noqa: E402

import minimax01.kernels as kernels  # noqa: E402
from minimax01.kernels import fused_ops  # noqa: E402
from minimax01.kernels import lightning_triton as lt  # noqa: E402
from minimax01.kernels import moe_decode, moe_triton  # noqa: E402
from minimax01.kernels.attention_ref import apply_partial_rope  # noqa: E402
from minimax01.kernels.dispatch import grouped_mm_available  # noqa: E402
from minimax01.kernels.lightning_ref import (  # noqa: E402
    layer_decay_rates,
    lightning_decode_ref,
    lightning_prefill_ref,
)
from minimax01.kernels.moe_ref import experts_ref, silu_mul_ref  # noqa: E402
from minimax01.kernels.norm_ref import rms_norm, rms_norm_gate  # noqa: E402
from minimax01.model.attention import rope_inv_freq  # noqa: E402
from minimax01.model.moe import route  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
H, D = (4, 32) if SMOKE else (64, 128)
LAYER = 40  # a middle lightning layer of the 80: decay rates s = slope·(1 − 40/79 + 1e−5)


def timed(fn, graph: bool = False) -> float:
    """ms; NaN in smoke mode (the interpreter's timings mean nothing) and where fn fails (reported, so that
    one failing competitor does not cost the whole run)."""
    try:
        if SMOKE:
            fn()
            return float("nan")
        return bench_graph(fn) if graph else bench(fn)
    except Exception as exc:
        print("timing failed:", type(exc).__name__, str(exc)[:300], flush=True)
        if not SMOKE:
            torch.cuda.synchronize()
        return float("nan")


def fla_ops():
    try:
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
    except Exception as exc:  # fla-core is carried as a wheel; report its absence instead of failing
        print("fla unavailable:", exc)
        return None, None
    return chunk_simple_gla, fused_recurrent_simple_gla


def rand_qkv(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """q, k, v [n, H, D] bf16 views of one SiLU'd [n, H, 3D] projection (the model's layout)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    qkv = F.silu(torch.randn(n, H, 3 * D, device=DEV, generator=g, dtype=torch.bfloat16))
    return qkv.split(D, dim=-1)


# ------------------------------------------------------------------------------------------- prefill


def prefill_section(roof: dict, sweep: bool, rows: dict) -> None:
    chunk_gla, _ = fla_ops()
    decay = layer_decay_rates(H, LAYER, 80).to(DEV)
    slot = torch.zeros(1, dtype=torch.int64, device=DEV)

    def ours(q, k, v, st, **cfg):
        cu = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=DEV)
        return lt.prefill(q, k, v, decay, cu, st, slot, **cfg)

    if sweep:
        configs = [dict(block_e=be, chunk=c, num_warps=w, num_stages=st)
                   for be, c, w, st in ((64, 64, 4, 3), (64, 64, 8, 3), (64, 64, 4, 4), (32, 64, 4, 3),
                                        (128, 64, 8, 3), (64, 128, 8, 2))]
        res = []
        for n in ((256,) if SMOKE else (32768, 524288)):
            q, k, v = [t.contiguous() for t in rand_qkv(n, seed=1)]
            st = torch.zeros(1, H, D, D, device=DEV)
            for cfg in configs:
                res.append(dict(n=n, **cfg, ms=timed(lambda: ours(q, k, v, st, **cfg))))
                print("sweep", res[-1], flush=True)
            del q, k, v
        # Several sequences at once (4 x 8 K): fewer value splits pay once the sequences fill the GPU.
        n = 64 if SMOKE else 8192
        q, k, v = [t.contiguous() for t in rand_qkv(4 * n, seed=1)]
        st4 = torch.zeros(4, H, D, D, device=DEV)
        cu4 = torch.tensor([0, n, 2 * n, 3 * n, 4 * n], dtype=torch.int32, device=DEV)
        slots4 = torch.arange(4, device=DEV)
        for be, w in ((64, 4), (128, 8)):
            cfg = dict(block_e=be, num_warps=w, num_stages=3)
            res.append(dict(n=f"4x{n}", **cfg, ms=timed(lambda: lt.prefill(q, k, v, decay, cu4, st4, slots4, **cfg))))
            print("sweep", res[-1], flush=True)
        rows["prefill config sweep"] = res
        del q, k, v
    cfg = {}  # the library's own choice (lightning_triton.prefill_config), as the model runs it

    # Correctness at awkward lengths against the fp64 reference, with a non-zero initial state.
    check = []
    for n in ((1, 7, 100) if SMOKE else (1, 7, 255, 4097, 70001)):
        q, k, v = rand_qkv(n, seed=n)
        st0 = torch.randn(1, H, D, D, device=DEV) * 0.1
        st = st0.clone()
        o = ours(q, k, v, st, **cfg)
        args = [t.transpose(0, 1) for t in (q, k, v)]
        o64, s64 = lightning_prefill_ref(*[a.double() for a in args], decay, st0[0].double())
        o16, s16 = lightning_prefill_ref(*args, decay, st0[0])
        check.append(dict(n=n, err_o=rel_err(o.transpose(0, 1), o64), err_state=rel_err(st[0], s64),
                          torch_bf16_err_o=rel_err(o16, o64), torch_bf16_err_state=rel_err(s16, s64)))
        print("check", check[-1], flush=True)
    rows["prefill correctness (rel. error vs fp64 reference)"] = check

    table = []
    for n in ((256,) if SMOKE else (4096, 32768, 131072, 524288)):
        q, k, v = [t.contiguous() for t in rand_qkv(n, seed=2)]
        floor_ms = 4 * n * H * D * 2 / (roof["copy_gbps"] * 1e6)  # read q, k, v and write o once
        row = dict(n=n, hbm_floor_ms=floor_ms)
        st = torch.zeros(1, H, D, D, device=DEV)
        o = ours(q, k, v, st, **cfg)
        row["ours_ms"] = timed(lambda: ours(q, k, v, torch.zeros(1, H, D, D, device=DEV), **cfg))
        if n == 32768 or SMOKE:  # the model's layout: strided views of the qkv projection
            qs, ks, vs = rand_qkv(n, seed=2)
            row["ours_strided_ms"] = timed(lambda: ours(qs, ks, vs, torch.zeros(1, H, D, D, device=DEV), **cfg))
        if chunk_gla is not None:
            def fla():
                return chunk_gla(q[None], k[None], v[None], g_gamma=-decay, scale=1.0, output_final_state=True)
            row["fla_ms"] = timed(fla)
            if not math.isnan(row["fla_ms"]) or SMOKE:
                o_fla, s_fla = fla()
                row["err_vs_fla_o"] = rel_err(o, o_fla[0])
                row["err_vs_fla_state"] = rel_err(st[0], s_fla[0].float())
                del o_fla, s_fla
        if n <= 131072:
            def torch_chunked():
                with kernels.use_backend("torch"):
                    kernels.lightning_prefill(q, k, v, decay, [0, n], torch.zeros(1, H, D, D, device=DEV), [0])
            row["torch_ms"] = timed(torch_chunked)
        row["ours_Mtok_s"] = n / row["ours_ms"] / 1e3
        row["ours_frac_of_floor"] = floor_ms / row["ours_ms"]
        if "fla_ms" in row:
            row["speedup_vs_fla"] = row["fla_ms"] / row["ours_ms"]
        table.append(row)
        print(row, flush=True)
        del q, k, v, o
        torch.cuda.empty_cache() if not SMOKE else None
    auto = lt.prefill_config(H, D, 32768, 32768, torch.cuda.get_device_properties(0).multi_processor_count
                             if not SMOKE else 132)
    rows[f"lightning prefill, batch 1, {H} heads x {D}, bf16 (config {auto})"] = table


# ------------------------------------------------------------------------------------------- decode


def decode_section(roof: dict, sweep: bool, rows: dict) -> None:
    _, fused_rec = fla_ops()
    decay = layer_decay_rates(H, LAYER, 80).to(DEV)
    slots_total = 8 if SMOKE else 256
    states = torch.randn(slots_total, H, D, D, device=DEV) * 0.1
    configs = [dict()]  # the library default first
    if sweep:
        configs += [dict(block_e=16, num_warps=2), dict(block_e=32, num_warps=4), dict(block_e=128, num_warps=8),
                    dict(block_e=32, num_warps=2), dict(block_e=64, num_warps=8), dict(block_e=16, num_warps=1),
                    dict(block_e=32, num_warps=1), dict(block_e=16, num_warps=4)]
    table, check = [], []
    tiny = torch.zeros(1, device=DEV)
    for b in ((1, 3) if SMOKE else (1, 16, 64, 256)):
        q, k, v = rand_qkv(b, seed=b)
        slots = torch.randperm(slots_total, device=DEV)[:b]
        # correctness (fp64 oracle) on a copy
        st = states.clone()
        o = lt.decode(q, k, v, decay, st, slots)
        s64 = states[slots].double()
        o64 = lightning_decode_ref(q.double(), k.double(), v.double(), decay, s64)
        check.append(dict(batch=b, err_o=rel_err(o, o64), err_state=rel_err(st[slots], s64)))
        floor_ms = 2 * b * H * D * D * 4 / (roof["copy_gbps"] * 1e6)
        row = dict(batch=b, floor_ms=floor_ms)
        # The fixed cost of one kernel in a graph replay (a one-element add), to read the batch-1 rows against.
        row["one_tiny_kernel_graph_ms"] = timed(lambda: tiny.add_(1), graph=True)
        # In a model's step the kernel runs between others, not as a graph of its own: 8 calls on disjoint slot
        # sets in one graph (each state cold after the flush) amortise the replay's fixed cost.
        slot_sets = torch.randperm(slots_total, device=DEV)[:8 * b].view(8, b) if 8 * b <= slots_total else None
        row["one_tiny_kernel_in_step_ms"] = timed(lambda: [tiny.add_(1) for _ in range(8)], graph=True) / 8
        for cfg in configs:
            tag = "" if cfg is configs[0] else f"[{cfg['block_e']},{cfg['num_warps']}]"
            row["ours_graph_ms" + tag] = timed(lambda: lt.decode(q, k, v, decay, states, slots, **cfg), graph=True)
            if slot_sets is not None:
                row["ours_in_step_ms" + tag] = timed(
                    lambda: [lt.decode(q, k, v, decay, states, s, **cfg) for s in slot_sets], graph=True) / 8
        best = min((v for key, v in row.items() if key.startswith("ours_graph") and not math.isnan(v)),
                   default=float("nan"))
        row["ours_best_in_step_ms"] = min((v for key, v in row.items() if key.startswith("ours_in_step")
                                           and not math.isnan(v)), default=float("nan"))
        row["ours_best_graph_ms"] = best
        row["ours_eager_ms"] = timed(lambda: lt.decode(q, k, v, decay, states, slots, **configs[0]))
        if fused_rec is not None:
            init = states[:b].clone()
            qf, kf, vf = (t[:, None] for t in (q, k, v))  # [B, 1, H, D]
            row["fla_graph_ms"] = timed(lambda: fused_rec(qf, kf, vf, g_gamma=-decay, scale=1.0,
                                                          initial_state=init, output_final_state=True), graph=True)

        def torch_step():
            with kernels.use_backend("torch"):
                kernels.lightning_decode(q, k, v, decay, states, slots)
        row["torch_graph_ms"] = timed(torch_step, graph=True)
        row["ours_frac_of_copy_bw"] = floor_ms / best
        table.append(row)
        print(row, flush=True)
    rows["decode correctness (rel. error vs fp64 reference)"] = check
    rows[f"lightning decode, fp32 state, {H} heads x {D}x{D}, CUDA graph, L2 flushed"] = table


# ------------------------------------------------------------------------------------------- MoE


def moe_section(roof: dict, sweep: bool, rows: dict) -> None:
    E, HID, INTER = (4, 64, 96) if SMOKE else (32, 6144, 9216)
    g = torch.Generator(device=DEV).manual_seed(0)
    w13 = torch.randn(E, 2 * INTER, HID, device=DEV, generator=g, dtype=torch.bfloat16) * HID**-0.5
    w2 = torch.randn(E, HID, INTER, device=DEV, generator=g, dtype=torch.bfloat16) * INTER**-0.5
    gate = torch.randn(E, HID, device=DEV, generator=g, dtype=torch.bfloat16) * HID**-0.5
    tf_block = transformers_moe(E, HID, INTER, gate, w13, w2)

    def ours(x, impl):
        w, ids = route(x @ gate.t(), 2, x.dtype)
        if impl == "auto":
            return kernels.moe_experts(x, w, ids, w13, w2)
        if impl == "grouped_mm":
            return moe_triton.grouped_mm_experts(x, w, ids, w13, w2)
        if impl == "cublas_loop":
            return cublas_loop_experts(x, w, ids, w13, w2)
        if impl == "gemv" or isinstance(impl, tuple):  # tuple: (block_n, block_k, num_warps, num_stages)
            cfg = dict(zip(("block_n", "block_k", "num_warps", "num_stages"), impl)) if impl != "gemv" else {}
            return moe_decode.gemv_experts(x, w, ids, w13, w2, **cfg)
        return moe_triton.triton_experts(x, w, ids, w13, w2, impl if isinstance(impl, dict) else None)

    tokens = (1, 2, 5, 40) if SMOKE else (1, 2, 16, 64, 4096)
    xs = {t: torch.randn(t, HID, device=DEV, generator=g, dtype=torch.bfloat16) for t in tokens}
    # fp32 oracle: one fp32 copy of the weights (22 GB at real dims), freed before timing.
    check = []
    w13f, w2f = w13.float(), w2.float()
    for t, x in xs.items():
        w, ids = route(x @ gate.t(), 2, x.dtype)
        ref = experts_ref(x.float(), w.float(), ids, w13f, w2f)
        c = dict(tokens=t, err_triton=rel_err(ours(x, "triton"), ref),
                 err_torch_bf16_loop=rel_err(experts_ref(x, w, ids, w13, w2), ref))
        if grouped_mm_available(DEV):
            c["err_grouped_mm"] = rel_err(ours(x, "grouped_mm"), ref)
        if tf_block is not None:
            c["err_transformers"] = rel_err(tf_block(x[None])[0], ref)
        check.append(c)
    del w13f, w2f
    rows["MoE correctness (rel. error vs fp32 reference)"] = check
    if not SMOKE:
        torch.cuda.empty_cache()

    expert_bytes = 3 * HID * INTER * 2
    table, sweep_rows = [], []
    for t, x in xs.items():
        _, ids = route(x @ gate.t(), 2, x.dtype)
        hit = int(ids.unique().numel())
        flops = 2 * t * 2 * 3 * HID * INTER
        bw_floor = hit * expert_bytes / (roof["copy_gbps"] * 1e6)
        mm_floor = flops / (roof["matmul_bf16_tflops"] * 1e9)
        row = dict(tokens=t, experts_hit=hit, weight_read_floor_ms=bw_floor, matmul_floor_ms=mm_floor)
        row["ours_triton_ms"] = timed(lambda: ours(x, "triton"))
        if grouped_mm_available(DEV):
            row["ours_grouped_mm_ms"] = timed(lambda: ours(x, "grouped_mm"))
        row["ours_auto_ms"] = timed(lambda: ours(x, "auto"))
        if t <= 64:
            row["ours_auto_graph_ms"] = timed(lambda: ours(x, "auto"), graph=True)
            row["ours_triton_graph_ms"] = timed(lambda: ours(x, "triton"), graph=True)
        if t >= 64:  # candidate for prefill: one dense cuBLAS GEMM per expert on its sorted rows (host sync)
            row["cublas_loop_ms"] = timed(lambda: ours(x, "cublas_loop"))
        if t <= 16:  # the per-token GEMV path (auto picks it up to dispatch.GEMV_MAX_TOKENS tokens)
            row["ours_gemv_graph_ms"] = timed(lambda: ours(x, "gemv"), graph=True)
        if tf_block is not None:
            row["transformers_ms"] = timed(lambda: tf_block(x[None]))
        best = min((v for key, v in row.items() if key.startswith("ours_") and not math.isnan(v)),
                   default=float("nan"))
        row["ours_best_ms"] = best
        row["ours_frac_of_roofline"] = max(bw_floor, mm_floor) / best
        row["ours_tflops"] = flops / best / 1e9
        if "transformers_ms" in row:
            row["speedup_vs_transformers"] = row["transformers_ms"] / best
        table.append(row)
        print(row, flush=True)
        if sweep and t <= 2:
            for cfg in ((16, 512, 4, 3), (8, 1024, 4, 2), (4, 1024, 4, 3), (2, 1024, 4, 3), (4, 2048, 4, 3),
                        (4, 1024, 8, 3), (4, 512, 4, 4), (2, 2048, 4, 2), (1, 2048, 4, 3)):
                sweep_rows.append(dict(tokens=t, gemv=str(cfg), graph=True,
                                       ms=timed(lambda: ours(x, cfg), graph=True)))
                print("sweep", sweep_rows[-1], flush=True)
        if sweep and (t in (1, 4096) or SMOKE):
            cands = ([dict(BM=16, BN=n, BK=kk, GROUP_M=1, num_warps=4, num_stages=s)
                      for n, kk, s in ((128, 64, 5), (64, 64, 4), (64, 128, 3), (32, 128, 3), (32, 64, 4),
                                       (128, 128, 4))] if t <= 64 else
                     [dict(BM=128, BN=128, BK=64, GROUP_M=8, num_warps=8, num_stages=3),
                      dict(BM=128, BN=128, BK=64, GROUP_M=16, num_warps=8, num_stages=4),
                      dict(BM=64, BN=256, BK=64, GROUP_M=8, num_warps=8, num_stages=3),
                      dict(BM=128, BN=64, BK=128, GROUP_M=8, num_warps=8, num_stages=3)])
            for cfg in cands:
                sweep_rows.append(dict(tokens=t, **cfg, graph=t <= 64, ms=timed(lambda: ours(x, cfg), graph=t <= 64)))
                print("sweep", sweep_rows[-1], flush=True)
    rows[f"MoE experts + router, {E} experts {HID}->{INTER}, top-2, bf16"] = table
    if sweep_rows:
        rows["MoE Triton config sweep"] = sweep_rows


def cublas_loop_experts(x, w, ids, w13, w2):
    """Experiment: rows sorted by expert once, then per expert a dense [n, H] x [H, 2I] and [n, I] x [I, H]
    cuBLAS GEMM on contiguous slices (one host sync for the counts)."""
    T, k = ids.shape
    inter = w13.shape[1] // 2
    order, counts, _ = moe_triton.sort_by_expert(ids, w13.shape[0])
    xs = x[order // k]
    ys = torch.empty_like(xs)
    lo = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            h = xs[lo:lo + n] @ w13[e].t()
            ys[lo:lo + n] = kernels.silu_mul(h) @ w2[e].t()
        lo += n
    y = torch.empty_like(ys)
    y[order] = ys * w.reshape(-1)[order, None]
    return y.view(T, k, -1).sum(1)


def transformers_moe(E, HID, INTER, gate, w13, w2):
    """transformers 5.17 MiniMaxSparseMoeBlock sharing our weights (no copy), grouped_mm experts."""
    try:
        from transformers import MiniMaxConfig
        from transformers.models.minimax.modeling_minimax import MiniMaxSparseMoeBlock
    except Exception as exc:
        print("transformers MiniMax unavailable:", exc)
        return None
    cfg = MiniMaxConfig(hidden_size=HID, intermediate_size=INTER, num_local_experts=E, num_experts_per_tok=2)
    cfg._experts_implementation = "grouped_mm"
    with torch.device("meta"):
        block = MiniMaxSparseMoeBlock(cfg)
    block.gate.weight = torch.nn.Parameter(gate, requires_grad=False)
    block.experts.gate_up_proj = torch.nn.Parameter(w13, requires_grad=False)
    block.experts.down_proj = torch.nn.Parameter(w2, requires_grad=False)
    return block.eval()


# ------------------------------------------------------------------------------------------- fused small ops


def fused_cases(t: int):
    """(op, fused fn, torch twin fn, check fn -> (fused out, twin out), bytes the fused kernel must move) at
    T = t tokens, bf16: RMSNorm (hidden 6144), lightning norm + gate (inner 8192), RoPE on q and k (64 / 8 heads
    of 128, rotary dim 64; in place: only the rotary dims are read and written) and SiLU·mul (I = 9216)."""
    hidden, inner, inter = (200, 200, 96) if SMOKE else (6144, 8192, 9216)
    heads, kv_heads, rd = (4, 2, 16) if SMOKE else (64, 8, 64)
    g = torch.Generator(device=DEV).manual_seed(t)

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, device=DEV, generator=g, dtype=torch.bfloat16) * scale + shift

    x, w_hidden = randn(t, hidden), randn(hidden, scale=0.2, shift=1.0)
    o, gate, w_inner = randn(t, inner, scale=1e-2), randn(t, inner, scale=4.0), randn(inner, scale=0.2, shift=1.0)
    q, k = randn(t, heads, D), randn(t, kv_heads, D)
    # Positions up to 1 M: CUDA's cosf / sinf take their slow (Payne-Hanek) argument reduction above
    # |angle| ≈ 1e5, i.e. for the lowest frequencies past 100 K tokens; below 64 K they never do.
    pos_by_range = {span: torch.randint(0, hi, (t,), device=DEV, generator=g)
                    for span, hi in (("< 64 K", 1 << 16), ("< 1 M", 1 << 20))}
    inv_freq = rope_inv_freq(rd, 1e7).to(DEV)
    h = randn(t, 2 * inter, scale=3.0)

    def twin_rope(pos):  # the model before the fusion: two out-of-place rotations
        return apply_partial_rope(q, pos, inv_freq), apply_partial_rope(k, pos, inv_freq)

    def check_rope(pos):
        qf, kf = q.clone(), k.clone()
        fused_ops.rope_(qf, kf, pos, inv_freq)
        return torch.cat([qf.flatten(), kf.flatten()]), torch.cat([r.flatten() for r in twin_rope(pos)])

    def both(ours, twin):
        return lambda: (ours(), twin())

    norm, norm_twin = partial(fused_ops.rms_norm, x, w_hidden, 1e-5), partial(rms_norm, x, w_hidden, 1e-5)
    gated = partial(fused_ops.rms_norm_gate, o, gate, w_inner, 1e-6)
    gated_twin = partial(rms_norm_gate, o, gate, w_inner, 1e-6)
    silu, silu_twin = partial(fused_ops.silu_mul, h), partial(silu_mul_ref, h)
    yield f"rms_norm {hidden}", norm, norm_twin, both(norm, norm_twin), (2 * t + 1) * hidden * 2
    yield f"rms_norm + gate {inner}", gated, gated_twin, both(gated, gated_twin), (3 * t + 1) * inner * 2
    for span, pos in pos_by_range.items():
        yield (f"rope q {heads}x{D} + k {kv_heads}x{D}, rotary {rd}, positions {span}",
               partial(fused_ops.rope_, q, k, pos, inv_freq), partial(twin_rope, pos), partial(check_rope, pos),
               2 * t * (heads + kv_heads) * rd * 2 + t * 8)
    if t > 1:  # the grouped_mm expert path it serves runs from 64 rows per expert
        yield f"silu_mul I={inter}", silu, silu_twin, both(silu, silu_twin), 3 * t * inter * 2


def fused_section(roof: dict, sweep: bool, rows: dict) -> None:
    """Fused Triton kernels vs the model's torch twins run eagerly (and both from a CUDA graph at T = 1,
    where a decode step replays them); GB/s from the bytes the fused kernel must move."""
    table = []
    for t in ((1, 5) if SMOKE else (1, 64, 4096)):
        for op, ours, twin, check, nbytes in fused_cases(t):
            out, ref = check()
            row = dict(op=op, tokens=t, bytes_floor_ms=nbytes / (roof["copy_gbps"] * 1e6),
                       err_vs_twin=rel_err(out, ref), bit_equal_frac=float((out == ref).float().mean()))
            row["fused_ms"] = timed(ours)
            row["torch_eager_ms"] = timed(twin)
            if t == 1:
                row["fused_graph_ms"] = timed(ours, graph=True)
                row["torch_graph_ms"] = timed(twin, graph=True)
            row["fused_GB_s"] = nbytes / row["fused_ms"] / 1e6
            row["fused_frac_of_copy_bw"] = row["fused_GB_s"] / roof["copy_gbps"]
            row["speedup_vs_torch_eager"] = row["torch_eager_ms"] / row["fused_ms"]
            table.append(row)
            print(row, flush=True)
    rows["fused small ops, bf16: Triton vs the torch twin"] = table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="prefill,decode,moe,fused")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    roof = {"matmul_bf16_tflops": float("nan"), "copy_gbps": 3000.0} if SMOKE else roofline()
    print("roofline", roof, flush=True)
    rows: dict = {}
    with torch.inference_mode():
        for name in args.only.split(","):
            sections = {"prefill": prefill_section, "decode": decode_section, "moe": moe_section,
                        "fused": fused_section}
            sections[name](roof, args.sweep, rows)
    meta = {**environment(), **roof, "wall_s": round(time.time() - t0, 1)}
    if not SMOKE:
        name = "kernels" if args.only == ap.get_default("only") else "kernels-" + args.only.replace(",", "-")
        for p in write_results(name, rows, meta):
            print("wrote", p)
    for title, table in rows.items():
        print("\n##", title)
        for r in table:
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    main()
