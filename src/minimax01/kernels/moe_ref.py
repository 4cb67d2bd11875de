"""Torch reference of the expert mixture (docs/model.md §6): the oracle for the grouped-GEMM kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_mul_ref(h: torch.Tensor) -> torch.Tensor:
    """h [..., 2I] = [w1 x | w3 x] -> silu(w1 x) ⊙ w3 x [..., I]: the experts' SwiGLU (twin of kernels.silu_mul)."""
    inter = h.shape[-1] // 2
    return F.silu(h[..., :inter]) * h[..., inter:]


def route_ref(router_logits: torch.Tensor, top_k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax in fp32 -> top-k -> renormalise -> model dtype. Returns (weights [T, k], expert ids [T, k])."""
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32 if router_logits.dtype != torch.float64 else None)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(dtype), ids


def experts_ref(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w13: torch.Tensor,
                w2: torch.Tensor) -> torch.Tensor:
    """Reference expert mixture: Σ_k w_k · w2(silu(w1 x) ⊙ w3 x). x [T, H] -> [T, H]. Loops over experts
    that received tokens (the oracle; GPU kernels replace it)."""
    T, H = x.shape
    out = torch.zeros_like(x)
    flat_ids = ids.reshape(-1)
    token_idx = torch.arange(T, device=x.device).repeat_interleave(ids.shape[1])
    for e in torch.unique(flat_ids).tolist():
        sel = (flat_ids == e).nonzero(as_tuple=True)[0]
        tok = token_idx[sel]
        h = x[tok] @ w13[e].t()  # [n, 2I]
        y = silu_mul_ref(h) @ w2[e].t()  # [n, H]
        out.index_add_(0, tok, y * weights.reshape(-1)[sel, None])
    return out


def experts_dense(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w13: torch.Tensor,
                  w2: torch.Tensor) -> torch.Tensor:
    """experts_ref without host syncs (no unique / nonzero): every expert runs on every token and a [T, E]
    combine matrix, zero outside each token's top-k, weighs the results. E times the FLOPs of experts_ref, so
    only for what must not sync: a CUDA-graph capture of a step whose experts fall back to torch (fp32)."""
    E = w13.shape[0]
    combine = torch.zeros(x.shape[0], E, dtype=weights.dtype, device=x.device).scatter_(1, ids, weights)  # [T, E]
    h = torch.einsum("th,eih->eti", x, w13)  # [E, T, 2I]
    y = torch.einsum("eti,ehi->eth", silu_mul_ref(h), w2)  # [E, T, H]
    return torch.einsum("eth,te->th", y, combine)
