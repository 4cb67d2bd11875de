"""Triton lightning attention (docs/model.md §3.3-3.5) over the flattened variable-length batch.

Prefill: one program per (sequence, head, value-column block). It walks its sequence in chunks of C = 64
tokens and keeps the fp32 state slice S[:, e0:e0+BE] in registers for the whole sequence, so the state never
leaves the chip between chunks (fla's chunk kernel writes per-chunk states to memory and re-reads them).
Splitting the value dim E into E/BE blocks gives heads·E/BE programs per sequence (64·2 = 128 for Text-01 at
BE = 64), enough to fill an H100 at batch 1; the price is that each split re-reads Q, K and recomputes QKᵀ.
`prefill_config` widens BE to 128 (no split) once several sequences fill the GPU.

Per chunk (rows j, t = 0..m-1 of the chunk, λ = exp(-s)):
    O = ((Q Kᵀ) ∘ λ^(j-t)[j≥t]) V  +  (Q ∘ λ^(j+1)) S
    S ← λ^m S + (K ∘ λ^(m-1-t))ᵀ V
All products run on the tensor cores with fp32 accumulation: Q Kᵀ, P V and Kᵀ V on bf16 operands (as the
original's bf16 matmuls); (Q ∘ λ^(j+1)) S on bf16 operands too for 16-bit models (S is rounded for this
product only; the carried state stays fp32; the whole kernel ran 16 % faster than with the tf32 product, at
the same error against the fp64 reference, docs/kernels.md), fp32/tf32 for fp32 inputs.

Decode: one program per (sequence, head, value block); it gathers the state by slot index, updates it in
place (S = λS + kᵀv in fp32) and writes o = qS. One read and one write of the state: HBM-bound.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minimax01.kernels.triton_common import cast, dot, interpreting, num_sms


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, decay_ptr, cu_ptr, slot_ptr, st_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_ss, stride_sh,
    D: tl.constexpr, E: tl.constexpr, BE: tl.constexpr, C: tl.constexpr, INTER_BF16: tl.constexpr,
    STATE_ONLY: tl.constexpr, INTERPRET: tl.constexpr,
):
    # STATE_ONLY: only the state recurrence (no Q read, no output): the segment states of
    # lightning_segmented.py, which reads K and V alone.
    b = tl.program_id(0)
    h = tl.program_id(1)
    eb = tl.program_id(2)
    start = tl.load(cu_ptr + b)
    end = tl.load(cu_ptr + b + 1)
    slot = tl.load(slot_ptr + b)
    s = tl.load(decay_ptr + h)

    offs_d = tl.arange(0, D)
    offs_e = eb * BE + tl.arange(0, BE)
    offs_c = tl.arange(0, C)
    st_ptrs = st_ptr + slot * stride_ss + h * stride_sh + offs_d[:, None] * E + offs_e[None, :]
    S = tl.load(st_ptrs)  # [D, BE] fp32, carried in registers over the whole sequence

    pos = offs_c.to(tl.float32)
    q_decay = tl.exp(-s * (pos + 1.0))  # λ^(j+1)
    diff = pos[:, None] - pos[None, :]
    diag = tl.where(diff >= 0, tl.exp(-s * tl.maximum(diff, 0.0)), 0.0)  # λ^(j-t), causal
    q_base = q_ptr + h * stride_qh + offs_d[None, :]
    kT_base = k_ptr + h * stride_kh + offs_d[:, None]
    v_base = v_ptr + h * stride_vh + offs_e[None, :]
    o_base = o_ptr + h * stride_oh + offs_e[None, :]

    for c0 in range(start, end, C):
        rows = c0 + offs_c
        mask = (rows < end)[:, None]
        r64 = rows.to(tl.int64)[:, None]  # T·stride passes 2^31 at long contexts (512 K · 24576)
        if not STATE_ONLY:  # Q first, as before the state-only variant existed (the order the timings below had)
            qi = tl.load(q_base + r64 * stride_qt, mask=mask, other=0.0)  # [C, D]
        # K is loaded transposed: both of its products take Kᵀ as it comes, no register transpose
        # (measured 1.16 -> 1.08 ms at 32 K, 16.9 -> 16.0 ms at 512 K).
        kT = tl.load(kT_base + tl.trans(r64) * stride_kt, mask=tl.trans(mask), other=0.0)  # [D, C]
        vi = tl.load(v_base + r64 * stride_vt, mask=mask, other=0.0)  # [C, BE]
        m = tl.minimum(end - c0, C).to(tl.float32)
        # λ^(m-1-t); rows past the end are zero in kT, the maximum keeps exp() from overflowing there.
        k_decay = tl.exp(-s * tl.maximum(m - 1.0 - pos, 0.0))
        kdT = cast(kT.to(tl.float32) * k_decay[None, :], kT.dtype, INTERPRET)
        if STATE_ONLY:
            upd = dot(kdT, vi, None, INTERPRET)  # (K ∘ λ^(m-1-t))ᵀ V  [D, BE]
        else:
            # The three products that do not depend on each other are issued back to back (measured at
            # BE = 64, 4 warps: 1.68 -> 1.22 ms at 32 K, 25.6 -> 16.9 ms at 512 K). The gain is not overlap of
            # the products: compiled for sm_90 (Triton 3.6) every wgmma group is followed by wait_group 0.
            if INTER_BF16:  # S rounded to bf16 for this product only (the carried state stays fp32)
                inter = dot(cast(qi.to(tl.float32) * q_decay[:, None], tl.bfloat16, INTERPRET),
                            cast(S, tl.bfloat16, INTERPRET), None, INTERPRET)
            else:
                inter = dot(qi.to(tl.float32) * q_decay[:, None], S, None, INTERPRET)
            upd = dot(kdT, vi, None, INTERPRET)  # (K ∘ λ^(m-1-t))ᵀ V  [D, BE]
            qk = dot(qi, kT, None, INTERPRET)  # [C, C] fp32
            o = dot(cast(qk * diag, vi.dtype, INTERPRET), vi, inter, INTERPRET)
            tl.store(o_base + r64 * stride_ot, cast(o, o_ptr.dtype.element_ty, INTERPRET), mask=mask)
        S = S * tl.exp(-s * m) + upd

    tl.store(st_ptrs, S)


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, decay_ptr, slot_ptr, st_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_ob, stride_oh,
    stride_ss, stride_sh,
    D: tl.constexpr, E: tl.constexpr, BE: tl.constexpr, INTERPRET: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    eb = tl.program_id(2)
    slot = tl.load(slot_ptr + b)
    s = tl.load(decay_ptr + h)
    offs_d = tl.arange(0, D)
    offs_e = eb * BE + tl.arange(0, BE)
    st_ptrs = st_ptr + slot * stride_ss + h * stride_sh + offs_d[:, None] * E + offs_e[None, :]
    S = tl.load(st_ptrs)  # [D, BE] fp32
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_d).to(tl.float32)
    k = tl.load(k_ptr + b * stride_kb + h * stride_kh + offs_d).to(tl.float32)
    v = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_e).to(tl.float32)
    S = S * tl.exp(-s) + k[:, None] * v[None, :]
    tl.store(st_ptrs, S)
    o = tl.sum(q[:, None] * S, axis=0)  # [BE]
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_e, cast(o, o_ptr.dtype.element_ty, INTERPRET))


def supported(head_dim: int, value_dim: int) -> bool:
    """The kernels need power-of-two head dims ≥ 16 (tl.arange and tl.dot limits)."""
    return all(d >= 16 and d & (d - 1) == 0 for d in (head_dim, value_dim))


def _check_state(states: torch.Tensor) -> None:
    if states.dtype != torch.float32 or states.stride(-1) != 1 or states.stride(-2) != states.shape[-1]:
        raise ValueError("lightning states must be fp32 with contiguous [D, E] matrices")


def prefill_config(heads: int, value_dim: int, total_tokens: int, max_len: int, sms: int) -> dict:
    """Launch parameters (measured on an H100, docs/kernels.md). block_e: the widest value block that still
    gives about one program per SM for as long as the longest sequence runs (heads · E/BE · T/max_len
    programs' worth of parallel work): narrower blocks re-read Q, K and recompute QKᵀ per block."""
    seqs = total_tokens / max(max_len, 1)
    block_e = 32
    for be in (128, 64):
        if heads * max(value_dim // be, 1) * seqs >= 0.9 * sms:
            block_e = be
            break
    return dict(block_e=min(block_e, value_dim), chunk=64, num_warps=8 if block_e >= 128 else 4, num_stages=3)


def prefill(
    q: torch.Tensor,  # [T, H, D], last dim contiguous (may be a strided view of the qkv projection)
    k: torch.Tensor,  # [T, H, D]
    v: torch.Tensor,  # [T, H, E]
    decay: torch.Tensor,  # [H] fp32
    cu_seqlens: torch.Tensor,  # [B+1] int32 on q.device
    states: torch.Tensor,  # [slots, H, D, E] fp32, read and written in place
    slots: torch.Tensor,  # [B] int64 on q.device
    max_len: int | None = None,  # longest sequence (None: T), picks the value split
    state_only: bool = False,  # only advance the states (no output; q is not read): returns None
    **config: int | bool,  # overrides: block_e, chunk, num_warps, num_stages (prefill_config), inter_bf16
) -> torch.Tensor | None:
    """Varlen lightning prefill; returns o [T, H, E] in q.dtype and updates states[slots]."""
    T, H, D = q.shape
    E = v.shape[-1]
    _check_state(states)
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("q, k, v need a contiguous last dim")
    # (Q ∘ decay)·S with S rounded to bf16 for 16-bit models (the carried state stays fp32).
    # fp32 inputs (tests) keep the fp32 product and, their tiles being twice as large, one stage less and value
    # blocks of at most 32 (a 128-wide fp32 block needs 256 KiB of shared memory: more than an H200 has).
    cfg = {**prefill_config(H, E, T, max_len or T, num_sms(q.device)), **config}
    cfg.setdefault("inter_bf16", q.element_size() == 2)
    if q.element_size() > 2 and "num_stages" not in config:
        cfg["num_stages"] -= 1
    if q.element_size() > 2 and "block_e" not in config:
        cfg["block_e"], cfg["num_warps"] = min(int(cfg["block_e"]), 32), 4
    block_e, chunk = min(int(cfg["block_e"]), E), int(cfg["chunk"])
    if E % block_e or chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"block_e must divide E = {E} and chunk be a power of two >= 16: {cfg}")
    out = torch.empty(0 if state_only else T, H, E, dtype=q.dtype, device=q.device)
    _prefill_kernel[(slots.shape[0], H, E // block_e)](
        q, k, v, out, decay, cu_seqlens, slots, states,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        states.stride(0), states.stride(1),
        D=D, E=E, BE=block_e, C=chunk, INTER_BF16=bool(cfg["inter_bf16"]),
        STATE_ONLY=state_only, INTERPRET=interpreting(), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


def decode_config(batch: int, heads: int, value_dim: int, sms: int) -> dict[str, int]:
    """Value block of the decode kernel (measured on an H100, docs/kernels.md): 64 columns (4 warps) once there
    are two programs per SM; below that (batch 1 and 2 at 64 heads) 16 columns, 4x the programs to keep more
    state loads in flight (5.7 -> 5.2 µs at batch 1)."""
    if batch * heads * max(value_dim // 64, 1) >= 2 * sms:
        return dict(block_e=64, num_warps=4)
    return dict(block_e=16, num_warps=2)


def decode(
    q: torch.Tensor,  # [B, H, D], last dim contiguous
    k: torch.Tensor,  # [B, H, D]
    v: torch.Tensor,  # [B, H, E]
    decay: torch.Tensor,  # [H] fp32
    states: torch.Tensor,  # [slots, H, D, E] fp32, updated in place
    slots: torch.Tensor,  # [B] int64 on q.device
    block_e: int | None = None,  # default: decode_config
    num_warps: int | None = None,
) -> torch.Tensor:
    """One recurrent step per sequence; returns o [B, H, E] in q.dtype."""
    B, H, D = q.shape
    E = v.shape[-1]
    _check_state(states)
    cfg = decode_config(B, H, E, num_sms(q.device))
    block_e = min(block_e or cfg["block_e"], E)
    num_warps = num_warps or cfg["num_warps"]
    out = torch.empty(B, H, E, dtype=q.dtype, device=q.device)
    _decode_kernel[(B, H, E // block_e)](
        q, k, v, out, decay, slots, states,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        states.stride(0), states.stride(1),
        D=D, E=E, BE=block_e, INTERPRET=interpreting(), num_warps=num_warps,
    )
    return out
