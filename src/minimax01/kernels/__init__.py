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
from minimax01.kernels.moe_ref import experts_dense, experts_ref, route_ref, silu_mul_ref

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


def _lightning_ok(q: torch.Tensor, v: torch.Tensor, states: torch.Tensor) -> bool:
    """Shapes and dtypes the Triton lightning kernels handle (fp64 is a test-only dtype: reference)."""
    from minimax01.kernels import lightning_triton

    return (q.dtype != torch.float64 and states.dtype == torch.float32
            and lightning_triton.supported(q.shape[-1], v.shape[-1]))


def lightning_prefill(
    q: torch.Tensor,  # [T, H, D] flattened new tokens of all sequences, model dtype
    k: torch.Tensor,  # [T, H, D]
    v: torch.Tensor,  # [T, H, E]
    decay: torch.Tensor,  # [H] fp32 per-head decay rate s (λ = exp(-s))
    cu_seqlens: list[int],  # [B+1] boundaries of each sequence in T
    states: torch.Tensor,  # [slots, H, D, E] fp32 state store of this layer, read and updated in place
    slots: list[int],  # [B] state slot of each sequence
    block: int = 256,
    cu_seqlens_t: torch.Tensor | None = None,  # the same on q's device (int32), if the caller has it already
    slots_t: torch.Tensor | None = None,  # the same on q's device (int64)
) -> torch.Tensor:
    """Chunked lightning attention for several sequences, each continuing from its slot's state.
    Returns o [T, H, E] in q.dtype; the final states are written back to `states[slots]`."""
    if use_triton(q.device) and _lightning_ok(q, v, states):
        from minimax01.kernels import lightning_triton

        dev = q.device
        if cu_seqlens_t is None:
            cu_seqlens_t = torch.tensor(cu_seqlens, dtype=torch.int32, device=dev)
        if slots_t is None:
            slots_t = torch.tensor(slots, dtype=torch.int64, device=dev)
        return lightning_triton.prefill(q, k, v, decay.to(dev, torch.float32), cu_seqlens_t, states, slots_t,
                                        max_len=max(b - a for a, b in zip(cu_seqlens, cu_seqlens[1:])))
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
    if use_triton(q.device) and _lightning_ok(q, v, states):
        from minimax01.kernels import lightning_triton

        return lightning_triton.decode(q, k, v, decay.to(q.device, torch.float32), states, slots.to(q.device))
    st = states[slots]  # gather [B, H, D, E]
    o = lightning_decode_ref(q, k, v, decay, st)
    states[slots] = st
    return o


def moe_route(
    logits: torch.Tensor,  # [T, E] router logits
    top_k: int,
    dtype: torch.dtype,  # of the returned weights (the model's)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing, SPEC §6: softmax in fp32, top-k, renormalised. Returns (weights [T, k], ids [T, k])."""
    if use_triton(logits.device) and logits.dtype != torch.float64 and logits.shape[-1] <= 1024:
        from minimax01.kernels import moe_decode

        return moe_decode.route(logits, top_k, dtype)
    return route_ref(logits, top_k, dtype)


def moe_experts(
    x: torch.Tensor,  # [T, hidden]
    weights: torch.Tensor,  # [T, k] routing weights (model dtype)
    ids: torch.Tensor,  # [T, k] expert ids
    w13: torch.Tensor,  # [E, 2I, hidden]: w1 rows then w3 rows
    w2: torch.Tensor,  # [E, hidden, I]
) -> torch.Tensor:
    """Σ_k weights[:, k] · w2(silu(w1 x) ⊙ w3 x) over the selected experts. Returns [T, hidden]."""
    # 16-bit only: fp32 experts would run the dots in tf32 and their tiles overflow shared memory (test dtype).
    if use_triton(x.device) and w13.dtype == x.dtype == w2.dtype and x.dtype in (torch.bfloat16, torch.float16):
        from minimax01.kernels import moe_triton

        if moe_triton.supported(x.shape[1], w2.shape[2]):
            from minimax01.kernels import moe_decode

            if x.shape[0] <= moe_decode.MAX_TOKENS:  # weight streaming without the sort (decode, small batch)
                return moe_decode.gemv_experts(x, weights, ids, w13, w2)
            return moe_triton.experts(x, weights, ids, w13, w2)
    if x.is_cuda and torch.cuda.is_current_stream_capturing():  # experts_ref syncs (unique, nonzero)
        return experts_dense(x, weights, ids, w13, w2)
    return experts_ref(x, weights, ids, w13, w2)


def paged_decode_attention(
    q: torch.Tensor,  # [B, H, D] one new query token per sequence
    k_cache: torch.Tensor,  # [blocks, block_size, KVH, D] one layer's key pool (keys after RoPE)
    v_cache: torch.Tensor,  # [blocks, block_size, KVH, D]
    block_tables: torch.Tensor,  # [slots, max_blocks] int32 (StateStore.block_table_t)
    slots: torch.Tensor,  # [B] int64
    seq_lens: torch.Tensor,  # [B] cached keys of each sequence, its new token included
    scale: float,
    max_len: int | None = None,  # host hint of max(seq_lens); None (CUDA graphs) is always correct
) -> torch.Tensor:
    """Decode attention of each sequence's new token over its whole paged K/V. Returns [B, H, D] in q.dtype.
    Triton reads the pool in place; the reference gathers each sequence's K/V and runs `attend_one`."""
    if use_triton(q.device) and q.dtype != torch.float64:
        from minimax01.kernels import paged_attention

        if paged_attention.supported(q.shape[-1], k_cache.shape[1]):
            return paged_attention.decode(q, k_cache, v_cache, block_tables, slots, seq_lens, scale,
                                          max_len=max_len)
    return paged_decode_ref(q, k_cache, v_cache, block_tables, slots, seq_lens, scale)


def paged_decode_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     slots: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Torch twin of paged_decode_attention (host loop over sequences; syncs on seq_lens)."""
    from minimax01.model.attention import attend_one  # the model imports kernels: import at call time

    bs, kvh, d = k_cache.shape[1:]
    k_pool, v_pool = k_cache.reshape(-1, kvh, d), v_cache.reshape(-1, kvh, d)
    out = torch.zeros_like(q)
    for b, (slot, n) in enumerate(zip(slots.tolist(), seq_lens.tolist())):
        if n:
            t = torch.arange(n, device=q.device)
            idx = block_tables[slot, t // bs].long() * bs + t % bs  # [n] flat pool positions
            out[b:b + 1] = attend_one(q[b:b + 1], k_pool[idx].to(q.dtype), v_pool[idx].to(q.dtype), scale)
    return out


# ------------------------------------------------------------------ fused small ops (fused_ops.py)
# The torch twins are the model's own functions (model/norm.py, model/attention.py), imported at call time
# because the model imports this module.


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., N], weight [N] -> weight · x / rms(x) [..., N], rounded like model.norm.rms_norm."""
    if use_triton(x.device):
        from minimax01.kernels import fused_ops

        if fused_ops.supported(x, weight, width=x.shape[-1]):
            return fused_ops.rms_norm(x, weight, eps)
    from minimax01.model import norm

    return norm.rms_norm(x, weight, eps)


def rms_norm_gate(x: torch.Tensor, gate_logits: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x, gate_logits [T, N], weight [N] -> sigmoid(gate_logits) · rms_norm(x) [T, N]: the lightning layer's
    output norm and gate (SPEC §3.6) in one pass on Triton."""
    if use_triton(x.device):
        from minimax01.kernels import fused_ops

        if fused_ops.supported(x, gate_logits, weight, width=x.shape[-1]):
            return fused_ops.rms_norm_gate(x, gate_logits, weight, eps)
    from minimax01.model import norm

    return norm.rms_norm_gate(x, gate_logits, weight, eps)


def rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> None:
    """Partial RoPE in place on q [T, H, D] and k [T, KVH, D] at positions [T]: the first 2·len(inv_freq) dims
    rotate (half-split pairs, fp32), the others are not touched. Triton rotates q and k in one launch; the
    reference runs model.attention.apply_partial_rope on each."""
    positions = positions.to(q.device)  # no-op (and no sync) where the caller keeps them on the device
    if use_triton(q.device):
        from minimax01.kernels import fused_ops

        if fused_ops.supported(q, k):
            fused_ops.rope_(q, k, positions, inv_freq)
            return
    from minimax01.model.attention import apply_partial_rope

    rd = 2 * inv_freq.numel()
    for x in (q, k):
        x[..., :rd] = apply_partial_rope(x[..., :rd], positions, inv_freq)


def silu_mul(h: torch.Tensor) -> torch.Tensor:
    """h [T, 2I] = [w1 x | w3 x] -> silu(w1 x) ⊙ w3 x [T, I] (the experts' SwiGLU)."""
    if use_triton(h.device):
        from minimax01.kernels import fused_ops

        if fused_ops.supported(h):
            return fused_ops.silu_mul(h)
    return silu_mul_ref(h)


# int8 weight-only ops (quant.py); imported last because w8a16 uses use_triton() from this module.
from minimax01.kernels.w8a16 import moe_experts_int8, w8a16_linear  # noqa: E402,F401
