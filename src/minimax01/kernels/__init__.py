"""One dispatch point per op. Each op has a torch reference (runs anywhere, the oracle in tests) and, on CUDA,
a Triton implementation. `MINIMAX01_KERNELS=torch|triton|auto` (default auto: Triton on CUDA when importable)
or `set_backend()` forces one.

Ops take the flattened variable-length batch of DESIGN.md: tokens of all sequences concatenated
(`cu_seqlens` gives the boundaries), lightning states addressed by slot index.
"""

from __future__ import annotations

import os

import torch

from minimax01.kernels.lightning_ref import lightning_decode_ref, lightning_prefill_ref
from minimax01.kernels.moe_ref import experts_ref

_BACKENDS = ("auto", "torch", "triton")
_backend = os.environ.get("MINIMAX01_KERNELS", "auto")


def set_backend(name: str) -> None:
    """Force the kernel backend: 'torch' (reference), 'triton', or 'auto'."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"kernel backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def use_triton(device: torch.device) -> bool:
    """Whether ops on `device` run the Triton kernels. Under TRITON_INTERPRET=1 Triton also runs on CPU
    (tests); 'auto' picks Triton on CUDA only."""
    if _backend == "torch":
        return False
    if _backend == "triton":
        if not triton_available():
            raise RuntimeError("MINIMAX01_KERNELS=triton but triton cannot be imported")
        return True
    return device.type == "cuda" and triton_available()


def lightning_prefill(
    q: torch.Tensor,  # [T, H, D] flattened new tokens of all sequences, model dtype
    k: torch.Tensor,  # [T, H, D]
    v: torch.Tensor,  # [T, H, E]
    decay: torch.Tensor,  # [H] fp32 per-head decay rate s (λ = exp(-s))
    cu_seqlens: list[int],  # [B+1] boundaries of each sequence in T
    states: torch.Tensor,  # [slots, H, D, E] fp32 state store of this layer, read and updated in place
    slots: list[int],  # [B] state slot of each sequence
    block: int = 256,
) -> torch.Tensor:
    """Chunked lightning attention for several sequences, each continuing from its slot's state.
    Returns o [T, H, E] in q.dtype; the final states are written back to `states[slots]`."""
    out = torch.empty_like(v)
    for b, slot in enumerate(slots):
        lo, hi = cu_seqlens[b], cu_seqlens[b + 1]
        if hi == lo:
            continue
        o, st = lightning_prefill_ref(q[lo:hi].transpose(0, 1), k[lo:hi].transpose(0, 1),
                                      v[lo:hi].transpose(0, 1), decay, states[slot], block)
        out[lo:hi] = o.transpose(0, 1)
        states[slot] = st.to(states.dtype)
    return out


def lightning_decode(
    q: torch.Tensor,  # [B, H, D] one new token per sequence
    k: torch.Tensor,  # [B, H, D]
    v: torch.Tensor,  # [B, H, E]
    decay: torch.Tensor,  # [H] fp32
    states: torch.Tensor,  # [slots, H, D, E] fp32, updated in place
    slots: torch.Tensor,  # [B] int64 slot indices
) -> torch.Tensor:
    """One recurrent step per sequence: S = λS + kᵀv, o = qS. Returns o [B, H, E] in q.dtype."""
    st = states[slots]  # gather [B, H, D, E]
    o = lightning_decode_ref(q, k, v, decay, st)
    states[slots] = st
    return o


def moe_experts(
    x: torch.Tensor,  # [T, hidden]
    weights: torch.Tensor,  # [T, k] routing weights (model dtype)
    ids: torch.Tensor,  # [T, k] expert ids
    w13: torch.Tensor,  # [E, 2I, hidden]: w1 rows then w3 rows
    w2: torch.Tensor,  # [E, hidden, I]
) -> torch.Tensor:
    """Σ_k weights[:, k] · w2(silu(w1 x) ⊙ w3 x) over the selected experts. Returns [T, hidden]."""
    return experts_ref(x, weights, ids, w13, w2)
