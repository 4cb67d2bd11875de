"""End-to-end long prefill (issue 15): an 8-layer slice of MiniMax-Text-01 at its real dimensions (7 lightning +
1 softmax layer, every layer with all 32 experts top-2, the real-vocab lm_head for the last token only), random
bf16 weights drawn on one GPU, prefilling 128 K, 512 K and 1 M tokens in chunks of 8192 through
`model(ids, prefill_chunk_size=..., logits_to_keep=1)` with the kernels that are on by default on a GPU (paged
prefill attention, lightning prefill, MoE).

Per length: seconds, tokens/s, peak memory above weights + KV cache, and beside them the sum of per-op floors
(FLOPs over the bf16 matmul peak, bytes over the copy bandwidth, both measured in this run by common.roofline())
and floor / measured. Where the time goes: device events around every attention module, its projections and
every MoE block over the whole run (common.ModuleTimer), each op beside its floor. The lightning + softmax pair
(one decoder layer of each kind, each with its MoE: what bench/longctx.py's pair section timed, less its
embedding and last-token lm_head) against the issue's target. Then the same table projected to the 80-layer
model on 8 GPUs at TP=8 (assumptions printed and written with the results).

    PYTHONPATH=src python bench/long_prefill.py            # one H200: about 4-5 minutes
    PYTHONPATH=src python bench/long_prefill.py --smoke    # tiny dims and lengths, CPU, well under a minute

Writes bench/results/long-prefill-<date>.{json,md} after every row (long-prefill-smoke-<date> under --smoke).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import torch  # noqa: E402

from common import RESULTS, ModuleTimer, environment, roofline, write_results  # noqa: E402
from longctx import DEV, K, Budget, allocated_gib, free_memory, is_oom, prefill, random_model  # noqa: E402
from minimax01.causal_lm import MiniMaxForCausalLM  # noqa: E402
from minimax01.config import MiniMaxConfig  # noqa: E402
from minimax01.parallel.plan import Hardware, all_reduce_s, measured_hardware  # noqa: E402

TARGET_PAIR_1M_S = 38.0  # issue 15: lightning + softmax pair at 1 M tokens on one H200 (57.8 s before)
OPS = ("softmax attention core", "softmax projections", "lightning attention core", "lightning projections",
       "MoE", "norms + residuals", "outside the layers")


class Results:
    """Sections of rows, rewritten to disk after every row so that a run cut short keeps what it measured."""

    def __init__(self, name: str, results_dir: Path) -> None:
        self.name, self.dir = name, results_dir
        self.sections: dict[str, list[dict[str, Any]]] = {}
        self.meta: dict[str, Any] = {}

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.sections.setdefault(section, []).append(row)
        print(f"[{time.strftime('%H:%M:%S')}] {section} | {row}", flush=True)
        self.save()

    def save(self) -> list[Path]:
        return write_results(self.name, self.sections, self.meta, self.dir)


def op_timer(model: MiniMaxForCausalLM) -> ModuleTimer:
    """Spans per layer kind: the whole decoder layer, its attention module, the attention's projection GEMMs and
    the MoE block. The attention core (kernel, RoPE, KV write, SiLU, norm + gate) is attention minus
    projections, norms + residuals are layer minus attention minus MoE (op_split)."""
    spans = []
    for layer in model.model.layers:
        kind, attn = ("lightning" if layer.is_linear else "softmax"), layer.self_attn
        projections = ((attn.qkv_proj, attn.output_gate, attn.out_proj) if layer.is_linear
                       else (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
        spans += [(f"{kind}_layer", layer), (f"{kind}_attention", attn), (f"{kind}_moe", layer.block_sparse_moe)]
        spans += [(f"{kind}_proj", p) for p in projections]
    return ModuleTimer(spans)


def op_split(row: dict[str, Any]) -> dict[str, float]:
    """Seconds per op of OPS from a prefill row's spans (missing kinds count 0)."""
    t = {k: row.get(f"{k}_s", 0.0) for k in ("softmax_layer", "softmax_attention", "softmax_proj", "softmax_moe",
                                              "lightning_layer", "lightning_attention", "lightning_proj",
                                              "lightning_moe")}
    layers = t["softmax_layer"] + t["lightning_layer"]
    attention, moe = t["softmax_attention"] + t["lightning_attention"], t["softmax_moe"] + t["lightning_moe"]
    return dict(zip(OPS, (t["softmax_attention"] - t["softmax_proj"], t["softmax_proj"],
                          t["lightning_attention"] - t["lightning_proj"], t["lightning_proj"], moe,
                          layers - attention - moe, row["time_s"] - layers)))


def op_floors(config: MiniMaxConfig, n: int, roof: dict[str, float]) -> dict[str, tuple[float, str]]:
    """Lower bounds in seconds per op of OPS for prefilling n tokens through `config`'s layers on one GPU, with
    the basis of each. FLOPs count 2 per multiply-add; bytes are HBM traffic at the measured copy bandwidth."""
    peak, bw = roof["matmul_bf16_tflops"] * 1e12, roof["copy_gbps"] * 1e9
    h, H, D, B = config.hidden_size, config.num_attention_heads, config.head_dim, config.block_size
    KVD, inner, E, k = config.num_key_value_heads * D, config.inner_size, config.num_local_experts, \
        config.num_experts_per_tok
    L, n_full, n_lin = config.num_hidden_layers, len(config.full_layers), len(config.linear_layers)
    # Causal softmax attention: query i sees i + 1 keys; Q Kᵀ and P V are 2·D FLOPs per (query, key, head) each.
    attn_flops = n_full * 4 * D * H * n * (n + 1) / 2
    # Lightning, per token and head: causal half of the intra-block Q Kᵀ and P V (2·B·D), q·S and the state
    # update kᵀv (4·D²); bytes: read q, k, v and write o once in bf16 (the state stays on chip).
    lin_flops = n_lin * n * H * (2 * B * D + 4 * D * D)
    lin_bytes = n_lin * 4 * n * inner * 2
    moe_flops = L * 2 * n * (k * 3 * h * config.intermediate_size + h * E)  # experts (SwiGLU) + router
    # Two RMSNorms (read + write) and two scaled residual sums (2 reads + 1 write) of [n, h] bf16 per layer;
    # outside: the embedding gather (read + write) and the final norm + lm_head of one token (negligible).
    return {
        "softmax attention core": (attn_flops / peak, "causal FLOPs / matmul peak"),
        "softmax projections": (n_full * 2 * n * (2 * h * inner + 2 * h * KVD) / peak, "GEMM FLOPs / matmul peak"),
        "lightning attention core": (max(lin_flops / peak, lin_bytes / bw),
                                     f"max(HBM {lin_bytes / bw:.3g} s, FLOPs {lin_flops / peak:.3g} s)"),
        "lightning projections": (n_lin * 2 * n * 5 * h * inner / peak, "GEMM FLOPs / matmul peak"),
        "MoE": (moe_flops / peak, "expert + router FLOPs / matmul peak"),
        "norms + residuals": (L * 10 * n * h * 2 / bw, "HBM bytes / copy bandwidth"),
        "outside the layers": (2 * n * h * 2 / bw, "embedding HBM bytes / copy bandwidth"),
    }


def projection(config: MiniMaxConfig, full: MiniMaxConfig, n: int, chunk: int, split: dict[str, float],
               floors: dict[str, tuple[float, str]], tp: int, hw: Hardware) -> list[dict[str, Any]]:
    """Each op of the slice scaled to `full`'s layer counts and split over tp GPUs, plus the all-reduces of every
    chunk (see ASSUMPTIONS); the communication is modelled, so it counts in the floor too."""
    per_kind = {"softmax": len(full.full_layers) / len(config.full_layers),
                "lightning": len(full.linear_layers) / len(config.linear_layers),
                "layer": full.num_hidden_layers / config.num_hidden_layers}
    scale = {"softmax attention core": per_kind["softmax"] / tp, "softmax projections": per_kind["softmax"] / tp,
             "lightning attention core": per_kind["lightning"] / tp,
             "lightning projections": per_kind["lightning"] / tp, "MoE": per_kind["layer"] / tp,
             "norms + residuals": per_kind["layer"], "outside the layers": 1.0}
    rows = [dict(n=n, op=op, one_gpu_slice_s=split[op], scale=scale[op], projected_s=split[op] * scale[op],
                 floor_s=floors[op][0] * scale[op]) for op in OPS]
    sizes = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
    ranks = list(range(tp))
    hidden = sum(2 * full.num_hidden_layers * all_reduce_s(c * full.hidden_size * 2, ranks, hw) for c in sizes)
    stats = sum(len(full.linear_layers) * all_reduce_s(c * 4, ranks, hw) for c in sizes)
    rows.append(dict(n=n, op="all-reduces (hidden state x2 per layer, norm statistic per lightning layer)",
                     scale=len(sizes), projected_s=hidden + stats, floor_s=hidden + stats))
    total, floor = sum(r["projected_s"] for r in rows), sum(r["floor_s"] for r in rows)
    rows.append(dict(n=n, op="TOTAL", projected_s=total, floor_s=floor, floor_over_projected=floor / total,
                     tok_per_s=n / total))
    return rows


def hardware() -> tuple[Hardware, str]:
    """The newest measured multi-GPU hardware file (bench/decode_step.py writes it), else plan.py's defaults."""
    files = sorted(RESULTS.glob("multi-gpu-hardware-*.json"))
    if not files:
        return Hardware(), "plan.py's default Hardware (no measured multi-gpu-hardware file)"
    hw, data = measured_hardware(files[-1])
    return hw, (f"{files[-1].name}: all-reduce bus bandwidth {hw.nvlink_Bps / 1e9:.0f} GB/s and fixed cost "
                f"{hw.latency_intra_s * 1e6:.1f} us, measured on {data.get('gpus', '?')} x {data.get('gpu', 'GPU')}")


def predict_s(prev: dict[str, Any] | None, n: int) -> float:
    """The next length's time from the last row: softmax attention core quadratic in n, the rest linear."""
    if prev is None:
        return 0.0
    r = n / prev["n"]
    quad = op_split(prev)["softmax attention core"]
    return quad * r * r + (prev["time_s"] - quad) * r


def measure(args: argparse.Namespace, res: Results, roof: dict[str, float], budget: Budget) -> None:
    config = MiniMaxConfig.preset_slice(args.preset, args.layers)
    full = MiniMaxConfig.preset(args.preset)
    hw, hw_note = hardware()
    res.meta.update(model=f"{args.preset} dims, {args.layers} layers ({len(config.linear_layers)} lightning + "
                    f"{len(config.full_layers)} softmax), {config.num_local_experts} experts top-"
                    f"{config.num_experts_per_tok}, hidden {config.hidden_size}, expert ffn "
                    f"{config.intermediate_size}, {config.num_attention_heads} q / {config.num_key_value_heads} kv "
                    f"heads x {config.head_dim}, vocab {config.vocab_size}, random bf16 weights",
                    chunk=args.chunk, projection_hardware=hw_note, assumptions=ASSUMPTIONS.format(tp=args.tp),
                    pair=PAIR_NOTE)
    t0 = time.time()
    model = random_model(config, seed=0)
    res.meta.update(weights_gib=allocated_gib(), model_init_s=round(time.time() - t0, 1))
    t0 = time.time()
    prefill(model, 2 * args.chunk, args.chunk, decode_steps=0, timer=op_timer)  # compiles first + later chunks
    res.meta["warmup_s"] = round(time.time() - t0, 1)
    print(f"model ready: {res.meta}", flush=True)
    prev: dict[str, Any] | None = None
    for n in args.lengths:
        predicted = predict_s(prev, n)
        if predicted + 10 > budget.left():
            res.add("prefill", dict(n=n, status=f"skipped: ~{predicted:.0f} s predicted, {budget.left():.0f} s "
                                                 f"of budget left"))
            continue
        print(f"[{time.strftime('%H:%M:%S')}] prefill {n} tokens (~{predicted:.0f} s predicted)", flush=True)
        try:
            row = prefill(model, n, args.chunk, decode_steps=0, timer=op_timer)
        except Exception as exc:
            if not is_oom(exc):
                raise
            res.add("prefill", dict(n=n, status="OOM"))
            free_memory()
            continue
        prev = row
        report(config, full, row, roof, args, hw, res)
        free_memory()


def report(config: MiniMaxConfig, full: MiniMaxConfig, row: dict[str, Any], roof: dict[str, float],
           args: argparse.Namespace, hw: Hardware, res: Results) -> None:
    n, wall = row["n"], row["time_s"]
    split, floors = op_split(row), op_floors(config, n, roof)
    floor = sum(f for f, _ in floors.values())
    n_full, n_lin = len(config.full_layers), len(config.linear_layers)
    # One decoder layer of each kind (a mean one for the lightning layers), each with its MoE, norms and residuals.
    pair = row.get("softmax_layer_s", 0.0) / n_full + row.get("lightning_layer_s", 0.0) / n_lin
    pair_attention = row.get("softmax_attention_s", 0.0) / n_full + row.get("lightning_attention_s", 0.0) / n_lin
    pair_floor = sum(floors[op][0] for op in OPS[:2]) / n_full + sum(floors[op][0] for op in OPS[2:4]) / n_lin \
        + (floors["MoE"][0] + floors["norms + residuals"][0]) * 2 / config.num_hidden_layers
    main = dict(n=n, chunk=args.chunk, time_s=wall, tok_per_s=n / wall,
                peak_above_weights_kv_gib=row.get("peak_minus_weights_and_cache_gib"),
                kv_cache_gib=row["kv_cache_gib"], floor_s=floor, floor_over_measured=floor / wall,
                pair_s=pair, pair_floor_s=pair_floor, pair_attention_only_s=pair_attention,
                # the three big items of the time split: attention modules by kind (projections included), MoE
                softmax_attention_s=split[OPS[0]] + split[OPS[1]], lightning_attention_s=split[OPS[2]] + split[OPS[3]],
                moe_s=split["MoE"])
    if n >= 1 << 20:
        main["pair_vs_target"] = f"{'MET' if pair <= TARGET_PAIR_1M_S else 'MISSED'} (<= {TARGET_PAIR_1M_S} s)"
    main["status"] = "ok"
    res.add("prefill", main)
    for op in OPS:
        res.add("time split", dict(n=n, op=op, measured_s=split[op], share=split[op] / wall,
                                   floor_s=floors[op][0], floor_over_measured=floors[op][0] / max(split[op], 1e-9),
                                   floor_basis=floors[op][1]))
    for proj in projection(config, full, n, args.chunk, split, floors, args.tp, hw):
        res.add(f"projection: {full.num_hidden_layers} layers on {args.tp} GPUs, TP={args.tp}", proj)


PAIR_NOTE = ("pair_s = the softmax decoder layer + the mean lightning decoder layer, each WITH its MoE, norms and "
             "residuals: what bench/longctx.py's pair section timed as a whole 2-layer model (its time also held "
             "the embedding and the last-token lm_head, < 0.1 %); issue 15: 57.8 s at 1 M before, target <= "
             f"{TARGET_PAIR_1M_S:.0f} s. pair_attention_only_s: the two attention modules alone (no MoE, norms)")
def summary(res: Results) -> None:
    """One line per length: the one-GPU slice, the pair and the projected full model."""
    projected = {r["n"]: r for title, rows in res.sections.items() if title.startswith("projection")
                 for r in rows if r["op"] == "TOTAL"}
    for r in res.sections.get("prefill", []):
        if r.get("status") != "ok":
            print(f"{r['n']:>8} tokens: {r['status']}")
            continue
        p = projected.get(r["n"], {})
        print(f"{r['n']:>8} tokens: slice {r['time_s']:.2f} s ({r['tok_per_s']:.0f} tok/s), floor {r['floor_s']:.2f} "
              f"s ({r['floor_over_measured']:.2f}), pair {r['pair_s']:.2f} s {r.get('pair_vs_target', '')}; "
              f"full model projected {p.get('projected_s', math.nan):.1f} s (floor "
              f"{p.get('floor_s', math.nan):.1f} s)")


ASSUMPTIONS = ("projection = each op of the one-GPU slice x (full model's layers of that kind / the slice's) "
               "/ tp: attention heads, kv heads and each expert's ffn split tp ways, each rank's share running at "
               "the efficiency measured here (optimistic for the narrower per-rank GEMMs); norms and residuals are "
               "replicated on every rank (x layers, not / tp); embedding and the last-token lm_head x 1; per "
               "chunk and layer, 2 all-reduces of the [chunk, hidden] bf16 hidden state (after attention, after "
               "the MoE) and per lightning layer 1 of the [chunk] fp32 norm statistic, each at plan.all_reduce_s "
               "(ring: fixed cost + 2(tp-1)/tp x bytes / bus bandwidth, both from projection_hardware; a "
               "measurement on fewer GPUs stands in for {tp}); no overlap of communication with compute")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny dims and lengths, runs on the CPU")
    ap.add_argument("--lengths", type=int, nargs="+", help="tokens per prefill (default 128 K, 512 K, 1 M)")
    ap.add_argument("--layers", type=int, default=8, help="layers of the slice (softmax every 8th and last)")
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--tp", type=int, default=8, help="GPUs of the projection")
    ap.add_argument("--budget-s", type=float, default=380.0, help="no length starts that would end after this")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.layers < 2:  # the pair and the projection need a layer of each kind
        ap.error("--layers must be >= 2")
    budget = Budget(args.budget_s)
    args.preset = "tiny" if args.smoke else "text-01"
    if args.smoke:
        args.chunk = min(args.chunk, 256)
        args.lengths = args.lengths or [1 * K, 2 * K]
    args.lengths = sorted(args.lengths or [128 * K, 512 * K, 1024 * K])  # longest last: most likely cut short
    res = Results("long-prefill-smoke" if args.smoke else "long-prefill", args.results_dir)
    res.meta.update(environment(), device=str(DEV), smoke=args.smoke)
    # The two ceilings, measured before the model exists (the GPU to itself). The CPU has no bf16 matmul peak
    # worth the name: nominal numbers keep the smoke run's arithmetic going.
    roof = roofline() if DEV.type == "cuda" else {"matmul_bf16_tflops": 1.0, "copy_gbps": 10.0}
    res.meta.update(roof, roofline_note="measured in this run" if DEV.type == "cuda" else "nominal (CPU smoke)")
    print(f"roofline {roof}", flush=True)
    t0 = time.time()
    with torch.inference_mode():
        measure(args, res, roof, budget)
    res.meta["wall_s"] = round(time.time() - t0, 1)
    print("\nAssumptions of the projection:", res.meta["assumptions"], "Pair:", res.meta["pair"], sep="\n")
    summary(res)
    for path in res.save():
        print("wrote", path)


if __name__ == "__main__":
    main()
