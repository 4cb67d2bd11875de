"""Expert mixture as one dense cuBLAS GEMM pair per expert on its expert-sorted rows: a comparison row of
bench/prefill_kernels.py, not an engine path.

Same sort as the grouped kernels (moe_triton.sort_by_expert), then per expert with rows:
    act = silu(x_e w1ᵀ) ⊙ (x_e w3ᵀ)  via one [n, H] x [H, 2I] GEMM and the fused SiLU·mul,
    y_e = act w2ᵀ                    [n, I] x [I, H]
on contiguous row slices, so every GEMM is a plain cuBLAS call at its best tile shapes. The expert row counts
are read on the host (one sync). It can be the fastest at long prefill chunks, but cuBLAS picks each GEMM's
kernel by the expert's row count, so a token's result would depend on how its prompt was chunked, which prefix
caching cannot allow (src/minimax01/kernels/moe_prefill_choice.py).
"""

from __future__ import annotations

import torch

from minimax01.kernels.fused_ops import silu_mul
from minimax01.kernels.moe_triton import sort_by_expert


def per_expert_experts(
    x: torch.Tensor,  # [T, hidden]
    weights: torch.Tensor,  # [T, k] routing weights
    ids: torch.Tensor,  # [T, k] expert ids
    w13: torch.Tensor,  # [E, 2I, hidden]: w1 rows then w3 rows
    w2: torch.Tensor,  # [E, hidden, I]
) -> torch.Tensor:
    """Σ_k weights[:, k] · w2(silu(w1 x) ⊙ w3 x) by per-expert GEMMs. Returns [T, hidden] in x.dtype."""
    T, hidden = x.shape
    topk = ids.shape[1]
    order, counts, _ = sort_by_expert(ids, w13.shape[0])
    xs = x[order // topk]  # [T·k, hidden] rows grouped by expert
    ys = torch.empty_like(xs)
    lo = 0
    for e, n in enumerate(counts.tolist()):  # the host sync
        if n:
            ys[lo:lo + n] = silu_mul(xs[lo:lo + n] @ w13[e].t()) @ w2[e].t()
        lo += n
    y = torch.empty_like(ys)
    y[order] = ys * weights.reshape(-1)[order, None]
    return y.view(T, topk, hidden).sum(1)
