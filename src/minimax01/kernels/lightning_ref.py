"""Torch reference of lightning attention (docs/model.md §3): the oracle for the Triton kernels and the CPU path.

Per head (d = e = head_dim) with decay rate s (λ = exp(-s)):
    S_t = λ·S_{t-1} + k_tᵀ v_t          (fp32 state [d, e])
    o_t = q_t · S_t                       (current token undecayed)
No scaling, no normalisation, no RoPE. The dtype handling follows the original code (docs/model.md §3.4/3.5) so
that bf16 results are bit-close to it; in fp32/fp64 every cast is a no-op.
"""

from __future__ import annotations

import math

import torch


def build_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes: 2^(-8(h+1)/H) for a power-of-two H; otherwise the closest lower power of two P's slopes
    followed by every other slope of 2P (docs/model.md §3.2)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + build_slopes(2 * closest)[0::2][: num_heads - closest]


def layer_decay_rates(num_heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """s_{l,h} = slope_h · (1 − l/(L−1) + 1e−5) with l the GLOBAL layer index (softmax layers counted).
    fp32, shape [heads]. (Original code: `slope_rate * (1 - layer_idx / (num_layers - 1) + 1e-5)`.)"""
    slopes = torch.tensor(build_slopes(num_heads), dtype=torch.float32, device="cpu")  # never meta
    factor = 1 - layer_idx / (num_layers - 1) + 1e-5 if num_layers > 1 else 1 + 1e-5
    return slopes * factor


def lightning_prefill_ref(
    q: torch.Tensor,  # [H, n, D] model dtype (SiLU already applied)
    k: torch.Tensor,  # [H, n, D]
    v: torch.Tensor,  # [H, n, E]
    decay: torch.Tensor,  # [H] fp32 decay rates s
    state: torch.Tensor | None = None,  # [H, D, E] fp32 initial state (None = zeros)
    block: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-chunked prefill of one sequence (docs/model.md §3.4). Returns (o [H, n, E] in q.dtype, state [H, D, E] fp32).

    Within a block: O = (Q ∘ λ^(j+1)) @ S  +  ((Q Kᵀ) ∘ λ^(j−t) for j≥t) @ V; then S ← λ^m S + (K ∘ λ^(m−1−t))ᵀ V.
    """
    H, n, D = q.shape
    E = v.shape[-1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # state / decay precision
    s = decay.to(device=q.device, dtype=acc).view(H, 1, 1)
    kv = torch.zeros(H, D, E, dtype=acc, device=q.device) if state is None else state.to(acc).clone()
    out = torch.empty(H, n, E, dtype=q.dtype, device=q.device)
    idx = torch.arange(1, block + 1, device=q.device, dtype=acc).view(1, block, 1)  # a_j = 1..B
    q_decay = torch.exp(-s * idx)  # [H, B, 1]
    diff = idx - idx.transpose(1, 2)  # a_j - a_t
    diag = torch.where(diff >= 0, torch.exp(-s * diff.clamp(min=0)), torch.zeros((), dtype=acc, device=q.device))
    for start in range(0, n, block):
        m = min(block, n - start)
        qi, ki, vi = q[:, start:start + m], k[:, start:start + m], v[:, start:start + m]
        inter = (qi * q_decay[:, :m]) @ kv  # [H, m, E] fp32
        # Original: Q Kᵀ in the model dtype (rounded), then fp32 with the decay mask.
        intra = (torch.matmul(qi, ki.transpose(-1, -2)).to(acc) * diag[:, :m, :m]) @ vi.to(acc)
        out[:, start:start + m] = (inter + intra).to(q.dtype)
        k_decay = torch.exp(-s * (m - idx[:, :m]))  # λ^(m - a_t) = λ^(m-1-t)
        # Original: (K ∘ decay) cast to the model dtype, matmul with V in the model dtype, added in fp32.
        kv = torch.exp(-s * m) * kv + torch.matmul((ki * k_decay).to(q.dtype).transpose(-1, -2), vi).to(acc)
    return out, kv.to(torch.float32) if q.dtype != torch.float64 else kv


def lightning_decode_ref(
    q: torch.Tensor,  # [B, H, D] one new token per sequence
    k: torch.Tensor,  # [B, H, D]
    v: torch.Tensor,  # [B, H, E]
    decay: torch.Tensor,  # [H] fp32
    state: torch.Tensor,  # [B, H, D, E] fp32 (or fp64 in tests), updated IN PLACE
) -> torch.Tensor:
    """One recurrent step (docs/model.md §3.5): S = λS + kᵀv (outer product in the model dtype, added in fp32);
    o = q @ S.to(model dtype). Returns o [B, H, E] in q.dtype."""
    ratio = torch.exp(-decay.to(device=q.device, dtype=state.dtype)).view(1, -1, 1, 1)
    outer = (k.unsqueeze(-1) * v.unsqueeze(-2)).to(state.dtype)  # [B, H, D, E]
    state.mul_(ratio).add_(outer)
    return torch.matmul(q.unsqueeze(-2), state.to(q.dtype)).squeeze(-2)


def lightning_recurrence_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence of docs/model.md §3.3 for one sequence ([H, n, D]); the mathematical definition."""
    H, n, D = q.shape
    st = torch.zeros(1, H, D, v.shape[-1], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
                     device=q.device) if state is None else state.unsqueeze(0).clone()
    outs = [lightning_decode_ref(q[:, t][None], k[:, t][None], v[:, t][None], decay, st)[0] for t in range(n)]
    return torch.stack(outs, dim=1), st[0]
