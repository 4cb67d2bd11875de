"""int8 weight-only quantization (issue 6 part 4): accuracy, memory, and the w8a16 kernels against bf16.

    PYTHONPATH=src python bench/quant.py [--only accuracy,memory,gemm,moe,model]

- accuracy (CPU): tiny model, 5 seeds × 256 positions: KL and top-1 agreement of int8 / bf16 vs fp32.
- memory: bytes of the weights before/after `quantize_` (tiny on CPU; 2 real-dims layers on meta; on the GPU
  the same 2 layers allocated for real, with the peak while quantizing).
- gemm (GPU): Triton w8a16 vs bf16 torch.matmul at decode shapes of the real model (M = 1..64) and a few
  larger M, each as a CUDA-graph replay after an L2 flush (the decode-step setting); correctness vs fp32.
- moe (GPU): one real-dims MoE layer's experts (32 × 6144 -> 9216, top-2): int8 dispatch (grouped Triton for
  decode) and the per-expert loop vs the bf16 dispatch.
- model (GPU): the int8 tiny model in bf16, Triton vs torch backend.

Writes bench/results/quant-<date>.{json,md} (and copies under $OUT). `--smoke` runs tiny shapes on the CPU
under TRITON_INTERPRET=1 to check the script itself (no timings, nothing written).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench"), str(ROOT / "tests")]

import torch  # noqa: E402
from common import bench, bench_graph, environment, rel_err, roofline, write_results  # noqa: E402
from conftest import make_model, random_ids  # noqa: E402

import minimax01.kernels as kernels  # noqa: E402
from minimax01.config import MiniMaxConfig  # noqa: E402
from minimax01.kernels import moe_experts_int8  # noqa: E402
from minimax01.kernels.moe_ref import experts_ref  # noqa: E402
from minimax01.kernels.w8a16_ref import dequantize, moe_experts_int8_ref, w8a16_linear_ref  # noqa: E402
from minimax01.kernels.w8a16_triton import w8a16_linear_triton  # noqa: E402
from minimax01.causal_lm import MiniMaxForCausalLM  # noqa: E402
from minimax01.model.moe import route  # noqa: E402
from minimax01.quant import model_bytes, quantize_, quantize_weight  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
# (name, N, K) of the real model's weights [out, in]
SHAPES = [("o_proj / out_proj", 6144, 8192), ("lightning qkv_proj", 24576, 6144),
          ("expert w13 (w1;w3)", 18432, 6144), ("expert w2", 6144, 9216)]
if SMOKE:
    SHAPES = [("smoke", 96, 64)]
DECODE_M = [1, 16, 64]
LARGE_M = [] if SMOKE else [128, 256]


def timed(fn, graph: bool = True) -> float:
    """Milliseconds; NaN in smoke mode (the interpreter's timings mean nothing) and where fn fails (printed,
    so that one failing competitor does not cost the whole run)."""
    try:
        fn()  # compile + autotune outside the graph
        if SMOKE:
            return float("nan")
        return bench_graph(fn) if graph else bench(fn)
    except Exception as exc:
        print("timing failed:", type(exc).__name__, str(exc)[:300], flush=True)
        return float("nan")


def kl_top1(ref: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    lp, lq = ref.double().log_softmax(-1), logits.double().log_softmax(-1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean()), float((ref.argmax(-1) == logits.argmax(-1)).double().mean())


def accuracy_section(roof: dict, rows: dict) -> None:
    cfg = MiniMaxConfig.preset("tiny")
    table = []
    for seed in range(2 if SMOKE else 5):
        fp32 = make_model(cfg, seed=seed, dtype=torch.float32)
        ids = random_ids(4, 64, cfg.vocab_size, seed=seed + 1)  # 256 positions
        ref = fp32(ids).logits
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        bf16_logits = bf16(ids).logits
        int8_fp32 = quantize_(copy.deepcopy(fp32))(ids).logits
        int8_bf16 = quantize_(bf16)(ids).logits
        p = ref.double().softmax(-1)
        row = {"seed": seed, "positions": ids.numel(), "ref_entropy_nats": float(-(p * p.log()).sum(-1).mean())}
        for name, (a, b) in {"int8w_fp32act_vs_fp32": (ref, int8_fp32), "bf16_vs_fp32": (ref, bf16_logits),
                             "int8w_bf16act_vs_fp32": (ref, int8_bf16),
                             "int8w_bf16act_vs_bf16": (bf16_logits, int8_bf16)}.items():
            row[f"KL {name}"], row[f"top1 {name}"] = kl_top1(a, b)
        table.append(row)
        print(row, flush=True)
    rows["Accuracy, tiny model (KL(ref || x) mean over positions, top-1 agreement)"] = table


def memory_section(roof: dict, rows: dict) -> None:
    table = []
    tiny = make_model(MiniMaxConfig.preset("tiny"), dtype=torch.bfloat16)
    before = model_bytes(tiny)
    table.append({"model": "tiny, bf16, CPU", "bf16_bytes": before, "int8_bytes": model_bytes(quantize_(tiny)),
                  "how": "allocated"})
    real2 = MiniMaxConfig(num_hidden_layers=2, attn_type_list=[0, 1])
    with torch.device("meta"):
        meta = MiniMaxForCausalLM(real2).to(torch.bfloat16)
    before = model_bytes(meta)
    table.append({"model": "2 real-dims layers (L+S), meta", "bf16_bytes": before,
                  "int8_bytes": model_bytes(quantize_(meta)), "how": "meta (numel·element_size)"})
    if not SMOKE:
        with torch.device("meta"):
            model = MiniMaxForCausalLM(real2).to(torch.bfloat16)
        model = model.to_empty(device=DEV)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        alloc0 = torch.cuda.memory_allocated()
        quantize_(model)
        torch.cuda.synchronize()
        table.append({"model": "2 real-dims layers (L+S), H100", "bf16_bytes": alloc0,
                      "int8_bytes": torch.cuda.memory_allocated(),
                      "peak_while_quantizing_bytes": torch.cuda.max_memory_allocated(),
                      "how": "torch.cuda.memory_allocated"})
        del model
        torch.cuda.empty_cache()
    for r in table:
        r["ratio"] = r["int8_bytes"] / r["bf16_bytes"]
        print(r, flush=True)
    rows["Memory of the weights, bf16 -> int8"] = table


def gemm_section(roof: dict, rows: dict) -> None:
    table = []
    g = torch.Generator(device=DEV).manual_seed(0)
    for name, N, K in SHAPES:
        w = torch.randn(N, K, device=DEV, generator=g).div_(K ** 0.5).to(torch.bfloat16)  # [N, K]
        q, scale = quantize_weight(w)
        w_deq = dequantize(q, scale, torch.bfloat16)  # the same values as the int8 weight, as bf16 for matmul
        for M in DECODE_M + LARGE_M:
            x = torch.randn(M, K, device=DEV, generator=g).to(torch.bfloat16)
            ref = x.float() @ dequantize(q, scale, torch.float32).t()  # fp32 reference of the same function
            y = w8a16_linear_triton(x, q, scale)
            row = {"weight": name, "M": M, "N": N, "K": K, "rel_err_triton": rel_err(y, ref),
                   "rel_err_bf16_matmul": rel_err(x @ w_deq.t(), ref)}
            row["bf16_matmul_us"] = 1e3 * timed(lambda: torch.matmul(x, w_deq.t()))
            row["int8_triton_us"] = 1e3 * timed(lambda: w8a16_linear_triton(x, q, scale))
            row["int8_torch_path_us"] = 1e3 * timed(lambda: w8a16_linear_ref(x, q, scale))
            row["speedup_triton_vs_bf16"] = row["bf16_matmul_us"] / row["int8_triton_us"]
            row["int8_triton_eager_us"] = 1e3 * timed(lambda: w8a16_linear_triton(x, q, scale), graph=False)
            int8_bytes = N * K + 4 * N + 2 * M * (K + N)
            row["int8_GBps"] = int8_bytes / row["int8_triton_us"] / 1e3
            row["bf16_GBps"] = (2 * N * K + 2 * M * (K + N)) / row["bf16_matmul_us"] / 1e3
            row["int8_frac_of_copy_bw"] = row["int8_GBps"] / roof["copy_gbps"]
            table.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    rows["w8a16 GEMM vs bf16 torch.matmul (CUDA-graph replay, L2 flushed; us)"] = table


def moe_section(roof: dict, rows: dict) -> None:
    E, H, inter = (4, 64, 96) if SMOKE else (32, 6144, 9216)
    g = torch.Generator(device=DEV).manual_seed(1)
    gate = torch.randn(E, H, device=DEV, generator=g).div_(H ** 0.5).to(torch.bfloat16)
    w13 = torch.randn(E, 2 * inter, H, device=DEV, generator=g).div_(H ** 0.5).to(torch.bfloat16)
    w2 = torch.randn(E, H, inter, device=DEV, generator=g).div_(inter ** 0.5).to(torch.bfloat16)
    q13, s13 = quantize_weight(w13)
    q2, s2 = quantize_weight(w2)
    w13 = dequantize(q13, s13, torch.bfloat16)  # bf16 baseline holds the same values
    w2 = dequantize(q2, s2, torch.bfloat16)
    table = []
    for T in DECODE_M:
        x = torch.randn(T, H, device=DEV, generator=g).to(torch.bfloat16)
        weights, ids = route(x @ gate.t(), 2, x.dtype)
        out = moe_experts_int8(x, weights, ids, q13, q2, s13, s2)
        ref = experts_ref(x.float(), weights.float(), ids, w13.float(), w2.float())
        row = {"tokens": T, "experts_hit": int(torch.unique(ids).numel()), "rel_err_int8": rel_err(out, ref),
               "bf16_dispatch_us": 1e3 * timed(lambda: kernels.moe_experts(x, weights, ids, w13, w2), graph=False),
               "int8_us": 1e3 * timed(lambda: moe_experts_int8(x, weights, ids, q13, q2, s13, s2), graph=False),
               "int8_per_expert_loop_us": 1e3 * timed(
                   lambda: moe_experts_int8_ref(x, weights, ids, q13, q2, s13, s2, linear=kernels.w8a16_linear),
                   graph=False)}
        row["speedup_int8_vs_bf16"] = row["bf16_dispatch_us"] / row["int8_us"]
        row["int8_weight_GBps"] = (row["experts_hit"] * 3 * H * inter) / row["int8_us"] / 1e3
        table.append(row)
        print(row, flush=True)
    rows[f"MoE experts {E} x {H}->{inter} top-2, int8 vs bf16 (eager, do_bench; us)"] = table


def model_section(roof: dict, rows: dict) -> None:
    """The int8 tiny model in bf16 on the GPU through both backends, each judged against the same int8 weights
    run with fp32 activations (64 tokens: every GEMM has M <= 64, so the Triton path runs throughout)."""
    cfg = MiniMaxConfig.preset("tiny")
    fp32 = make_model(cfg, dtype=torch.float32)
    ids = random_ids(4, 16, cfg.vocab_size, seed=7).to(DEV)
    ref = quantize_(copy.deepcopy(fp32)).to(DEV)(ids).logits
    model = quantize_(fp32.to(torch.bfloat16)).to(DEV)
    table = []
    for backend in ("torch", "triton"):
        with kernels.use_backend(backend):
            logits = model(ids).logits
        kl, top1 = kl_top1(ref, logits)
        table.append({"int8 tiny model, bf16 activations, backend": backend, "rel_err_vs_fp32_activations":
                      rel_err(logits, ref), "KL": kl, "top1": top1})
        print(table[-1], flush=True)
    rows["Integrated int8 model on the GPU (vs the same int8 weights with fp32 activations)"] = table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="accuracy,memory,gemm,moe,model")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    gpu = not SMOKE and torch.cuda.is_available()
    roof = roofline() if gpu else {"matmul_bf16_tflops": float("nan"), "copy_gbps": 3000.0}
    print("roofline", roof, flush=True)
    rows: dict = {}
    sections = {"accuracy": accuracy_section, "memory": memory_section, "gemm": gemm_section,
                "moe": moe_section, "model": model_section}
    for name in args.only.split(","):
        if name in ("gemm", "moe", "model") and not (gpu or SMOKE):
            print(f"skipping {name}: needs CUDA (or --smoke)")
            continue
        with torch.no_grad():
            sections[name](roof, rows)
        if not SMOKE:  # after every section, so that a run cut short keeps what it measured
            meta = {**environment(), **roof, "wall_s": round(time.time() - t0, 1)}
            paths = write_results("quant", rows, meta)
    if not SMOKE:
        print("wrote", *paths)


if __name__ == "__main__":
    main()
