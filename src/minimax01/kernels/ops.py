"""The public ops of the kernels package: each asks kernels/dispatch.py which implementation to run and runs it
(a Triton kernel, imported on first use, or its torch reference beside it).

Ops take the flattened variable-length batch the model runs on: tokens of all sequences concatenated
(`cu_seqlens` gives the boundaries), lightning states and KV blocks addressed by slot index.
"""

from __future__ import annotations

import torch

from minimax01.kernels.attention_ref import paged_attention_ref, paged_decode_ref, rope_ref_
from minimax01.kernels.dispatch import select
from minimax01.kernels.lightning_ref import lightning_decode_ref, lightning_prefill_ref
from minimax01.kernels.moe_ref import experts_dense, experts_ref, route_ref, silu_mul_ref
from minimax01.kernels.norm_ref import rms_norm as rms_norm_ref
from minimax01.kernels.norm_ref import rms_norm_gate as rms_norm_gate_ref
from minimax01.kernels.w8a16_ref import moe_experts_int8_ref, w8a16_linear_ref

# ------------------------------------------------------------------ lightning attention


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
    max_len = max((b - a for a, b in zip(cu_seqlens, cu_seqlens[1:])), default=0)
    impl = select("lightning_prefill", q, v, states, max_len)
    if impl in ("triton", "segmented"):
        dev = q.device
        if slots_t is None:
            slots_t = torch.tensor(slots, dtype=torch.int64, device=dev)
        decay = decay.to(dev, torch.float32)
        if impl == "segmented":
            import minimax01.kernels.lightning_segmented as lightning_segmented

            return lightning_segmented.prefill_segmented(q, k, v, decay, cu_seqlens, states, slots_t)
        import minimax01.kernels.lightning_triton as lightning_triton

        if cu_seqlens_t is None:
            cu_seqlens_t = torch.tensor(cu_seqlens, dtype=torch.int32, device=dev)
        return lightning_triton.prefill(q, k, v, decay, cu_seqlens_t, states, slots_t, max_len=max_len)
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
    if select("lightning_decode", q, v, states) == "triton":
        import minimax01.kernels.lightning_triton as lightning_triton

        return lightning_triton.decode(q, k, v, decay.to(q.device, torch.float32), states, slots.to(q.device))
    st = states[slots]  # gather [B, H, D, E]
    o = lightning_decode_ref(q, k, v, decay, st)
    states[slots] = st
    return o


# ------------------------------------------------------------------ mixture of experts


def moe_route(
    logits: torch.Tensor,  # [T, E] router logits
    top_k: int,
    dtype: torch.dtype,  # of the returned weights (the model's)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing: softmax in fp32, top-k, renormalised. Returns (weights [T, k], ids [T, k])."""
    if select("moe_route", logits) == "triton":
        import minimax01.kernels.moe_decode as moe_decode

        return moe_decode.route(logits, top_k, dtype)
    return route_ref(logits, top_k, dtype)


def linear(
    x: torch.Tensor,  # [..., K]
    weight: torch.Tensor,  # [N, K]
) -> torch.Tensor:
    """x Wᵀ [..., N] (no bias). In prefill steps on a GPU the row-invariant Triton GEMM (linear_triton.py says
    why), otherwise torch (cuBLAS)."""
    if select("linear", x, weight) == "triton":
        import minimax01.kernels.linear_triton as linear_triton

        return linear_triton.linear(x, weight)
    return torch.nn.functional.linear(x, weight)


def moe_experts(
    x: torch.Tensor,  # [T, hidden]
    weights: torch.Tensor,  # [T, k] routing weights (model dtype)
    ids: torch.Tensor,  # [T, k] expert ids
    w13: torch.Tensor,  # [E, 2I, hidden]: w1 rows then w3 rows
    w2: torch.Tensor,  # [E, hidden, I]
) -> torch.Tensor:
    """Σ_k weights[:, k] · w2(silu(w1 x) ⊙ w3 x) over the selected experts. Returns [T, hidden]."""
    impl = select("moe_experts", x, ids, w13, w2)
    if impl == "gemv":
        import minimax01.kernels.moe_decode as moe_decode

        return moe_decode.gemv_experts(x, weights, ids, w13, w2)
    if impl == "grouped_tma":
        import minimax01.kernels.moe_tma_triton as moe_tma_triton

        return moe_tma_triton.tma_experts(x, weights, ids, w13, w2)
    if impl in ("grouped", "grouped_mm"):
        import minimax01.kernels.moe_triton as moe_triton

        run = moe_triton.triton_experts if impl == "grouped" else moe_triton.grouped_mm_experts
        return run(x, weights, ids, w13, w2)
    if impl == "dense":
        return experts_dense(x, weights, ids, w13, w2)
    return experts_ref(x, weights, ids, w13, w2)


def moe_experts_int8(
    x: torch.Tensor,  # [T, hidden]
    weights: torch.Tensor,  # [T, k] routing weights (model dtype)
    ids: torch.Tensor,  # [T, k] expert ids
    w13: torch.Tensor,  # [E, 2I, hidden] int8: w1 rows then w3 rows
    w2: torch.Tensor,  # [E, hidden, I] int8
    w13_scale: torch.Tensor,  # [E, 2I] fp32
    w2_scale: torch.Tensor,  # [E, hidden] fp32
) -> torch.Tensor:
    """`moe_experts` with int8 experts (w = scale · q per output row). Returns [T, hidden] in x.dtype."""
    impl = select("moe_experts_int8", x, ids, w13, w2)
    if impl == "gemv":
        import minimax01.kernels.moe_decode as moe_decode

        return moe_decode.gemv_experts(x, weights, ids, w13, w2, w13_scale, w2_scale)
    if impl == "grouped":
        import minimax01.kernels.moe_triton as moe_triton

        return moe_triton.triton_experts(x, weights, ids, w13, w2, w13_scale=w13_scale, w2_scale=w2_scale)
    return moe_experts_int8_ref(x, weights, ids, w13, w2, w13_scale, w2_scale, linear=w8a16_linear)


def w8a16_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ (q [N, K] int8 · scale [N] fp32)ᵀ -> [..., N] in x.dtype."""
    if select("w8a16_linear", x) == "triton":
        import minimax01.kernels.w8a16_triton as w8a16_triton

        return w8a16_triton.w8a16_linear_triton(x, q, scale)
    return w8a16_linear_ref(x, q, scale)


def silu_mul(h: torch.Tensor) -> torch.Tensor:
    """h [T, 2I] = [w1 x | w3 x] -> silu(w1 x) ⊙ w3 x [T, I] (the experts' SwiGLU)."""
    if select("silu_mul", h) == "triton":
        import minimax01.kernels.fused_ops as fused_ops

        return fused_ops.silu_mul(h)
    return silu_mul_ref(h)


# ------------------------------------------------------------------ softmax attention


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
    if select("paged_decode_attention", q, k_cache) == "triton":
        import minimax01.kernels.paged_attention as paged_attention

        return paged_attention.decode(q, k_cache, v_cache, block_tables, slots, seq_lens, scale, max_len=max_len)
    return paged_decode_ref(q, k_cache, v_cache, block_tables, slots, seq_lens, scale)


def paged_prefill_attention(
    q: torch.Tensor,  # [T, H, D] new queries of all sequences after RoPE, concatenated
    k_cache: torch.Tensor,  # [blocks, block_size, KVH, D] one layer's key pool, this step's keys written
    v_cache: torch.Tensor,  # [blocks, block_size, KVH, D]
    block_tables: torch.Tensor,  # [slots, max_blocks] int32 (StateStore.block_table_t)
    scale: float,
    *,
    slots: list[int],  # [B] slot of each sequence
    cu_seqlens: list[int],  # [B+1] boundaries of each sequence's queries in T
    seq_lens: list[int],  # [B] cached keys of each sequence, its new queries included
    slots_t: torch.Tensor,  # [B] int64, `slots` on the device
) -> torch.Tensor:
    """Causal GQA attention of each sequence's new queries (its newest positions) over its whole paged K/V.
    Returns [T, H, D] in q.dtype. Triton reads the pool in place, all sequences in one launch; the reference
    gathers each sequence's K/V and runs `attend_one` (SDPA)."""
    if select("paged_prefill_attention", q, k_cache) == "triton":
        import minimax01.kernels.attention_prefill_triton as attention_prefill_triton

        return attention_prefill_triton.prefill(q, k_cache, v_cache, block_tables, slots_t, cu_seqlens, seq_lens,
                                                scale)
    return paged_attention_ref(q, k_cache, v_cache, block_tables, slots, cu_seqlens, seq_lens, scale)


def softmax_attention(
    q: torch.Tensor,  # [T, H, D] new queries of all sequences after RoPE
    k_cache: torch.Tensor,  # [blocks, block_size, KVH, D] one layer's key pool, this step's keys written
    v_cache: torch.Tensor,  # [blocks, block_size, KVH, D]
    block_tables: torch.Tensor,  # [slots, max_blocks] int32 (StateStore.block_table_t)
    scale: float,
    *,
    slots: list[int],  # [B] slot of each sequence
    start_pos: list[int],  # [B] tokens each sequence had cached before this step
    cu_seqlens: list[int],  # [B+1] boundaries of each sequence's queries in T
    slots_t: torch.Tensor,  # [B] int64, `slots` on the device
    positions: torch.Tensor,  # [T] position of each query on the device
    is_decode: bool,  # one query per sequence, each with a non-empty cache
    max_seq_len: int | None,  # host hint of the longest sequence after the step; None: read on the device only
) -> torch.Tensor:
    """Causal GQA attention of each sequence's new queries over its cached keys (BatchInfo gives the keyword
    arguments). Returns [T, H, D] in q.dtype. Decode runs `paged_decode_attention`, which reads lengths and
    slots from the device tensors only (a CUDA graph replays it at other lengths than the host lists say);
    other steps run `paged_prefill_attention` on the Triton backend, otherwise each sequence's K/V are gathered
    through the block table for `attend_one`."""
    impl = select("softmax_attention", q, is_decode)
    if impl == "paged_decode":
        # In decode a token's position is its sequence's cached length before it.
        return paged_decode_attention(q, k_cache, v_cache, block_tables, slots_t, positions + 1, scale,
                                      max_len=max_seq_len)
    seq_lens = [s + hi - lo for s, lo, hi in zip(start_pos, cu_seqlens, cu_seqlens[1:])]
    if impl == "paged_prefill":
        return paged_prefill_attention(q, k_cache, v_cache, block_tables, scale, slots=slots,
                                       cu_seqlens=cu_seqlens, seq_lens=seq_lens, slots_t=slots_t)
    return paged_attention_ref(q, k_cache, v_cache, block_tables, slots, cu_seqlens, seq_lens, scale)


def rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> None:
    """Partial RoPE in place on q [T, H, D] and k [T, KVH, D] at positions [T]: the first 2·len(inv_freq) dims
    rotate (half-split pairs, fp32), the others are not touched. Triton rotates q and k in one launch."""
    positions = positions.to(q.device)  # no-op (and no sync) where the caller keeps them on the device
    if select("rope_", q, k) == "triton":
        import minimax01.kernels.fused_ops as fused_ops

        fused_ops.rope_(q, k, positions, inv_freq)
        return
    rope_ref_(q, k, positions, inv_freq)


# ------------------------------------------------------------------ norms


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., N], weight [N] -> weight · x / rms(x) [..., N], rounded like norm_ref.rms_norm."""
    if select("rms_norm", x, weight) == "triton":
        import minimax01.kernels.fused_ops as fused_ops

        return fused_ops.rms_norm(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def rms_norm_gate(x: torch.Tensor, gate_logits: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x, gate_logits [T, N], weight [N] -> sigmoid(gate_logits) · rms_norm(x) [T, N]: the lightning layer's
    output norm and gate, in one pass on Triton."""
    if select("rms_norm_gate", x, gate_logits, weight) == "triton":
        import minimax01.kernels.fused_ops as fused_ops

        return fused_ops.rms_norm_gate(x, gate_logits, weight, eps)
    return rms_norm_gate_ref(x, gate_logits, weight, eps)
