"""Torch reference of the weight-only int8 ops (w8a16): activations in the model dtype, weights int8 with one
fp32 scale per output channel, `y = x @ (q * scale[:, None])ᵀ`. The oracle of the Triton kernels
(w8a16_triton.py, moe_triton.py / moe_decode.py with int8 weights), the path on CPU, and for many rows on the
GPU (prefill is compute bound: one int8 -> bf16 cast of the weight per call, then cuBLAS).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from minimax01.kernels.moe_ref import silu_mul_ref


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q [..., N, K] int8, scale [..., N] fp32 -> q · scale in `dtype` (product formed in fp32, or fp64 for an
    fp64 result, and rounded once)."""
    compute = torch.promote_types(torch.float32, dtype)
    return (q.to(compute) * scale.to(compute)[..., None]).to(dtype)


def w8a16_linear_ref(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference: x [..., K] @ (q [N, K] · scale [N])ᵀ -> [..., N] in x.dtype, as (x @ qᵀ) · scale like the
    kernel: q is exact in x.dtype and the fp32 scale is applied once to the output (mul_ computes in fp32).
    This moves 3 bytes per weight; dequantizing through fp32 first moved 11 and took 9x the bf16 GEMM time.
    fp16 alone dequantizes first: x @ qᵀ ≈ output / scale (≈ 2500 x the output) can exceed its range."""
    if x.dtype == torch.float16:
        return F.linear(x, dequantize(q, scale, x.dtype))
    return F.linear(x, q.to(x.dtype)).mul_(scale)


def moe_experts_int8_ref(
    x: torch.Tensor,  # [T, hidden]
    weights: torch.Tensor,  # [T, k] routing weights (model dtype)
    ids: torch.Tensor,  # [T, k] expert ids
    w13: torch.Tensor,  # [E, 2I, hidden] int8: w1 rows then w3 rows
    w2: torch.Tensor,  # [E, hidden, I] int8
    w13_scale: torch.Tensor,  # [E, 2I] fp32
    w2_scale: torch.Tensor,  # [E, hidden] fp32
    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = w8a16_linear_ref,
) -> torch.Tensor:
    """Σ_k weights[:, k] · w2(silu(w1 x) ⊙ w3 x) by per-expert w8a16 GEMMs through `linear` (the op
    `kernels.w8a16_linear` in the model, which takes the Triton GEMM for an expert's few rows on the GPU).
    Assignments are sorted by expert once (one host sync for the counts), so each active expert costs two
    GEMMs on a contiguous slice of the gathered rows plus the SwiGLU. Returns [T, hidden] in x.dtype."""
    k = ids.shape[1]
    flat_ids = ids.reshape(-1)  # [T·k]
    order = torch.argsort(flat_ids, stable=True)  # assignments grouped by expert
    counts = torch.bincount(flat_ids, minlength=w13.shape[0]).tolist()  # [E]
    tok = order // k  # token of each sorted assignment
    xs = x[tok]  # [T·k, hidden]
    ys = torch.empty_like(xs)
    lo = 0
    for e, n in enumerate(counts):
        if n:
            h = linear(xs[lo:lo + n], w13[e], w13_scale[e])  # [n, 2I]
            ys[lo:lo + n] = linear(silu_mul_ref(h), w2[e], w2_scale[e])  # [n, hidden]
        lo += n
    out = torch.zeros_like(x)
    return out.index_add_(0, tok, ys * weights.reshape(-1)[order, None])
