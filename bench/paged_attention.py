"""Paged decode attention of a softmax layer (issue 9, items 4-5): the Triton flash-decoding kernel
(`kernels/paged_attention.py`) against the model's previous decode path (gather each sequence's K/V from the
pool + SDPA through `attend_one`) and against the bytes floor (K/V read once at 3.0 TB/s), at real shapes
(64 query heads, 8 kv heads, D = 128, bf16, 64-token blocks scattered over the pool): batch 1 at 4 K, 128 K and
1 M keys, batch 64 at 4 K. Correctness: both paths against an fp32 reference. Then the real-dims softmax
decoder layer's decode step at 4 K context, eager and under a CUDA graph, on both backends.

    PYTHONPATH=src python bench/paged_attention.py

Writes bench/results/paged-attention-<date>.{json,md} (and copies under $OUT).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import torch  # noqa: E402
from common import bench, bench_graph, environment, rel_err, roofline, write_results  # noqa: E402
from layer import FULL, experts_hit, make_layer  # noqa: E402

import minimax01.kernels as kernels  # noqa: E402
from minimax01.cache import BatchInfo, StateStore  # noqa: E402
from minimax01.config import MiniMaxConfig, default_attn_type_list  # noqa: E402
from minimax01.engine.cuda_graph import DecodeGraphRunner  # noqa: E402
from minimax01.kernels import paged_attention  # noqa: E402
from minimax01.causal_lm import MiniMaxForCausalLM  # noqa: E402
from minimax01.kernels.attention_ref import attend_one  # noqa: E402

DEV = torch.device("cuda")
H, KVH, D, BS = 64, 8, 128, 64
FLOOR_BPS = 3.0e12  # bytes floor: K/V read once at 3.0 TB/s
CASES = [(1, 4096), (1, 131072), (1, 1048576), (64, 4096)]
SWEEP = [dict(block_n=bn, num_warps=w, splits_scale=1) for bn in (32, 64, 128) for w in (4, 8)]
SWEEP.append(dict(block_n=64, num_warps=4, splits_scale=2))
CONTEXT = 4096  # decode context of the layer and model sections (bench/layer.py's)
BUDGET_S = 150  # sections start only while the run is younger than this (the device call is limited to ~230 s)


def fp32_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [H, D], k/v [L, KVH, D] -> [H, D]: softmax attention in fp32, keys in slices (L up to 1 M)."""
    qg = q.float().view(KVH, H // KVH, D)
    scores = torch.cat([torch.einsum("kgd,lkd->kgl", qg, k[i:i + 65536].float())
                        for i in range(0, k.shape[0], 65536)], dim=-1) * scale  # [KVH, G, L]
    p = scores.softmax(-1)
    out = sum(torch.einsum("kgl,lkd->kgd", p[..., i:i + 65536], v[i:i + 65536].float())
              for i in range(0, k.shape[0], 65536))
    return out.reshape(H, D)


def attention_rows(rows: list[dict], sweep_rows: list[dict], save: Callable[[], None]) -> None:
    scale = D ** -0.5
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    g = torch.Generator(device=DEV).manual_seed(0)
    for batch, ctx in CASES:
        t0 = time.time()
        nblk = batch * ctx // BS
        k_cache = torch.randn(nblk + 8, BS, KVH, D, device=DEV, dtype=torch.bfloat16, generator=g)
        v_cache = torch.randn_like(k_cache)
        perm = torch.randperm(nblk + 8, device=DEV, generator=g)[:nblk].int()  # fragmented pool
        table = perm.view(batch, ctx // BS)
        slots = torch.arange(batch, device=DEV)
        lens = torch.full((batch,), ctx, device=DEV, dtype=torch.int64)
        q = torch.randn(batch, H, D, device=DEV, dtype=torch.bfloat16, generator=g)
        k_pool, v_pool = k_cache.view(-1, KVH, D), v_cache.view(-1, KVH, D)
        t = torch.arange(ctx, device=DEV)
        idx = [(table[b, t // BS].long() * BS + t % BS) for b in range(batch)]  # as StateStore._positions

        def ours(**kw):
            return paged_attention.decode(q, k_cache, v_cache, table, slots, lens, scale, max_len=ctx, **kw)

        def gather_sdpa():  # SoftmaxAttention's previous decode loop
            return torch.cat([attend_one(q[b:b + 1], k_pool[idx[b]], v_pool[idx[b]], scale) for b in range(batch)])

        out, old = ours(), gather_sdpa()
        err_ours = err_old = 0.0
        for b in sorted({0, batch - 1}):  # the fp32 reference gathers 8 GiB at 1 M: check first and last
            ref = fp32_reference(q[b], k_pool[idx[b]], v_pool[idx[b]], scale)
            err_ours = max(err_ours, rel_err(out[b], ref))
            err_old = max(err_old, rel_err(old[b], ref))
            del ref
        kv_bytes = 2 * batch * ctx * KVH * D * 2
        row = dict(batch=batch, context=ctx, kv_gb=kv_bytes / 1e9, floor_ms=kv_bytes / FLOOR_BPS * 1e3,
                   splits=paged_attention.num_splits(batch, KVH, ctx, sms, 64),
                   err_ours=err_ours, err_gather_sdpa=err_old, ok=err_ours <= 2 * err_old + 1e-3)
        row["ours_ms"] = bench(ours)
        row["ours_graph_ms"] = bench_graph(ours)
        row["gather_sdpa_ms"] = bench(gather_sdpa)
        if batch == 1:  # the attention alone on K/V already contiguous (what the gather feeds)
            kc, vc = k_pool[idx[0]], v_pool[idx[0]]
            row["sdpa_contiguous_ms"] = bench(lambda: attend_one(q[:1], kc, vc, scale))
            del kc, vc
        best = min(row["ours_ms"], row["ours_graph_ms"])
        row["ours_vs_floor"] = best / row["floor_ms"]
        row["ours_tbps"] = kv_bytes / best / 1e9
        row["speedup_vs_gather"] = row["gather_sdpa_ms"] / best
        default_splits = paged_attention.num_splits(batch, KVH, ctx, sms, 64)
        for cfg in SWEEP:
            splits = max(1, default_splits * cfg["splits_scale"])
            ms = bench(lambda: ours(block_n=cfg["block_n"], num_warps=cfg["num_warps"], splits=splits))
            sweep_rows.append(dict(batch=batch, context=ctx, block_n=cfg["block_n"], num_warps=cfg["num_warps"],
                                   splits=splits, ms=ms, vs_floor=ms / row["floor_ms"]))
        row["case_s"] = time.time() - t0
        rows.append(row)
        print(row, flush=True)
        save()
        del k_cache, v_cache, k_pool, v_pool, idx, out, old
        torch.cuda.empty_cache()


def layer_rows(copy_gbps: float, rows: list[dict]) -> None:
    """The real-dims softmax decoder layer's decode step at 4 K context (bench/layer.py's setting)."""
    context = CONTEXT
    config = MiniMaxConfig(num_hidden_layers=8, attn_type_list=default_attn_type_list(8))
    hid, inter, d = config.hidden_size, config.intermediate_size, config.head_dim
    layer = make_layer(config, FULL)
    attn_params = hid * H * d + 2 * hid * KVH * d + H * d * hid
    store = StateStore(config, max_seqs=64, device=DEV, dtype=torch.bfloat16, num_kv_blocks=64 * 66 + 600)
    store.k_cache.normal_()
    store.v_cache.normal_()
    g = torch.Generator(device=DEV).manual_seed(1)
    with torch.inference_mode():
        for b in (1, 64):
            slots = [store.allocate() for _ in range(b)]
            pre = BatchInfo(slots=slots, start_pos=[0] * b, num_new=[context] * b, device=DEV)
            store.prepare(pre)
            store.commit(pre)
            batch = BatchInfo(slots=slots, start_pos=[context] * b, num_new=[1] * b, device=DEV)
            kv_pos = store.prepare(batch)
            x = torch.randn(b, hid, device=DEV, generator=g, dtype=torch.bfloat16)

            def step():
                return layer(x, batch, store, kv_pos)
            hit = experts_hit(layer, step)
            bytes_moved = (2 * (attn_params + hid * config.num_local_experts + hit * 3 * hid * inter)
                           + 2 * b * (context + 1) * KVH * d * 2)
            row = dict(batch=b, context=context, experts_hit=hit, bytes_floor_ms=bytes_moved / (copy_gbps * 1e6))
            outs = {}
            for backend in ("torch", "triton"):
                with kernels.use_backend(backend):
                    outs[backend] = step().float()
                    row[f"{backend}_eager_ms"] = bench(step)
                    try:
                        row[f"{backend}_graph_ms"] = bench_graph(step)
                    except Exception as exc:  # the torch path builds index tensors per sequence on the host
                        print(backend, "decode step not capturable:", type(exc).__name__, str(exc)[:200],
                              flush=True)
                        torch.cuda.synchronize()
            row["rel_diff_triton_vs_torch"] = rel_err(outs["triton"], outs["torch"])
            best = min(v for k, v in row.items() if k.startswith("triton_") and k.endswith("_ms"))
            row["triton_vs_floor"] = best / row["bytes_floor_ms"]
            rows.append(row)
            print(row, flush=True)
            for s in slots:
                store.free(s)


def runner_rows(rows: list[dict], steps: int = 30) -> None:
    """An 8-layer model with real attention dims (7 lightning + 1 softmax layer, 4 experts instead of 32 to
    fit beside the rest) decoding at 4 K context: per-step wall time (host work included, as the engine sees
    it) of DecodeGraphRunner (graph replay) vs model.step eager on the Triton and torch backends, and
    the graph step's logits against model.step's from the same state."""
    context = CONTEXT
    config = MiniMaxConfig(num_hidden_layers=8, attn_type_list=default_attn_type_list(8), num_local_experts=4)
    with torch.device("meta"):
        model = MiniMaxForCausalLM(config).to(torch.bfloat16)
    model = model.to_empty(device=DEV).eval()
    g = torch.Generator(device=DEV).manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    runner = DecodeGraphRunner(model, max_model_len=70 * BS)
    store = runner.new_store(64, num_kv_blocks=65 * 70 - 1, kv_block_size=BS)  # the runner adds 1 slot, 1 block
    slots = [store.allocate() for _ in range(64)]
    pre = BatchInfo(slots, [0] * 64, [context] * 64, device=DEV)
    store.prepare(pre)
    store.commit(pre)
    store.lightning.normal_(0, 0.1, generator=g)
    store.k_cache.normal_(generator=g)
    store.v_cache.normal_(generator=g)
    vocab = config.vocab_size
    for b in (1, 64):
        sl = slots[:b]

        def decode_batch():
            return BatchInfo(sl, [store.seq_lens[s] for s in sl], [1] * b, device=DEV)
        tokens = torch.randint(0, vocab, (b,), device=DEV, generator=g)
        snapshot = store.lightning[:, sl].clone()
        with kernels.use_backend("triton"), torch.no_grad():
            got = runner.replay(tokens, decode_batch())  # captures the graph of this size, then replays it
            store.lightning[:, sl] = snapshot  # rewind the step: same state, same KV positions
            for s in sl:
                store.seq_lens[s] -= 1
            ref = model.step(tokens, decode_batch(), store)
        row = dict(batch=b, context=context, graph_sizes=str(runner.sizes), rel_diff_graph_vs_eager=rel_err(got, ref))
        for name, backend in (("graph", "triton"), ("eager_triton", "triton"), ("eager_torch", "torch")):

            def one():
                with torch.no_grad():
                    if name == "graph":
                        return runner.replay(tokens, decode_batch())
                    return model.step(tokens, decode_batch(), store)
            with kernels.use_backend(backend):
                one()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(steps):
                    one()
                torch.cuda.synchronize()
            row[f"{name}_step_ms"] = (time.perf_counter() - t0) / steps * 1e3
        row["graph_speedup_vs_eager_triton"] = row["eager_triton_step_ms"] / row["graph_step_ms"]
        rows.append(row)
        print(row, flush=True)


def main() -> None:
    t0 = time.time()
    roof = roofline()
    print("roofline", roof, flush=True)
    rows, sweep, layer_tab = [], [], []
    meta = {**environment(), **roof, "floor": "K/V bytes read once / 3.0 TB/s (layer: bytes / measured copy)",
            "layout": f"{H} q heads, {KVH} kv heads, D={D}, bf16, {BS}-token blocks in random pool order"}
    runner_tab: list[dict] = []
    sections = {"paged decode attention (ours vs gather + SDPA)": rows, "kernel config sweep": sweep,
                "softmax decoder layer decode step, 4 K context, real dims": layer_tab,
                "8-layer model decode step (real attention dims, 4 experts), CUDA graph runner": runner_tab}
    try:
        attention_rows(rows, sweep, lambda: write_results("paged-attention", sections, meta))
        for name, fn in (("layer", lambda: layer_rows(roof["copy_gbps"], layer_tab)),
                         ("runner", lambda: runner_rows(runner_tab))):
            if time.time() - t0 > BUDGET_S:
                meta[f"skipped_{name}"] = "time budget"
                continue
            try:
                fn()
            except Exception as exc:  # keep what the other sections measured
                meta[f"error_{name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(name, "failed:", meta[f"error_{name}"], flush=True)
            torch.cuda.empty_cache()
            write_results("paged-attention", sections, meta)
    finally:
        meta["wall_s"] = round(time.time() - t0, 1)
        write_results("paged-attention", sections, meta)


if __name__ == "__main__":
    main()
