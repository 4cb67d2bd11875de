"""Triton paged decode attention of the softmax layers: one new query token per sequence against that
sequence's keys and values read in place from the paged KV pool of the StateStore, through its block table.
Torch reference: attention_ref.paged_decode_ref.

Flash-decoding: the key range [0, L) of a sequence is cut into `splits` equal ranges (whole tiles of BN
tokens); one program per (sequence, kv head, split) runs an fp32 online softmax over its range for all
G = H / KVH query heads of that kv head at once (the G heads share every K/V tile it loads, so K/V are read
from HBM once per step). Each program writes its unnormalised partial output with its running max and sum;
a second small kernel combines the splits. The split count depends on the batch size (and an optional host
hint of the longest length) only, never on device values, so a step can be captured in a CUDA graph: programs
whose range is empty write a neutral partial (max −inf, sum 0).

Token t of a sequence sits in pool block block_table[slot, t // BS] at offset t % BS; each tile looks its
tokens' blocks up, so any block size and any fragmentation of the pool work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minimax01.kernels.triton_common import cast, dot, interpreting, num_sms

LOG2E = 1.4426950408889634


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, slot_ptr, len_ptr, o_ptr, m_ptr, l_ptr,
    stride_qb, stride_qh, stride_kblk, stride_ktok, stride_kh, stride_vblk, stride_vtok, stride_vh, stride_bt,
    scale_log2, SPLITS,
    G: tl.constexpr, BG: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BN: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    sp = tl.program_id(2)
    L = tl.load(len_ptr + b)
    slot = tl.load(slot_ptr + b).to(tl.int64)
    per = tl.cdiv(tl.cdiv(L, SPLITS), BN) * BN  # whole tiles per split
    lo = sp * per
    hi = tl.minimum(lo + per, L)

    offs_g = tl.arange(0, BG)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BN)
    heads = kvh * G + offs_g
    gmask = offs_g < G  # BG pads G up to tl.dot's minimum of 16 rows; the padding rows are zero queries
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=gmask[:, None],
                other=0.0)  # [BG, D]
    dt = q.dtype  # K/V are used in the query's dtype, as the torch path casts them
    m = tl.full([BG], float("-inf"), tl.float32)
    l = tl.zeros([BG], tl.float32)
    acc = tl.zeros([BG, D], tl.float32)
    bt = bt_ptr + slot * stride_bt
    k_base = k_ptr + kvh * stride_kh
    v_base = v_ptr + kvh * stride_vh
    for t0 in range(lo, hi, BN):
        tok = t0 + offs_n
        valid = tok < hi
        blk = tl.load(bt + tok // BS, mask=valid, other=0).to(tl.int64)  # pool offsets pass 2^31 at 1 M tokens
        off = tok % BS
        # K loaded transposed [D, BN]: the product takes Kᵀ as it comes.
        kT = tl.load(k_base + (blk * stride_kblk + off * stride_ktok)[None, :] + offs_d[:, None],
                     mask=valid[None, :], other=0.0).to(dt)
        s = dot(q, kT, None, INTERPRET) * scale_log2  # [BG, BN] fp32, log2 units
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))  # finite: every tile of a non-empty range has a valid token
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        vt = tl.load(v_base + (blk * stride_vblk + off * stride_vtok)[:, None] + offs_d[None, :],
                     mask=valid[:, None], other=0.0).to(dt)  # [BN, D]
        acc = dot(cast(p, dt, INTERPRET), vt, acc * alpha[:, None], INTERPRET)
        m = m_new

    part = (b * (tl.num_programs(1) * G) + heads) * SPLITS + sp  # [BG] row of [B, H, SPLITS]
    tl.store(m_ptr + part, m, mask=gmask)
    tl.store(l_ptr + part, l, mask=gmask)
    tl.store(o_ptr + part[:, None] * D + offs_d[None, :], acc, mask=gmask[:, None])


@triton.jit
def _reduce_kernel(
    o_part_ptr, m_ptr, l_ptr, out_ptr, stride_ob, stride_oh, SPLITS,
    D: tl.constexpr, SP2: tl.constexpr, INTERPRET: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SP2)
    offs_d = tl.arange(0, D)
    smask = offs_s < SPLITS
    row = (b * tl.num_programs(1) + h) * SPLITS + offs_s
    m = tl.load(m_ptr + row, mask=smask, other=float("-inf"))
    l = tl.load(l_ptr + row, mask=smask, other=0.0)
    mx = tl.max(m, 0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)  # an empty sequence (graph padding) gives 0, not NaN
    w = tl.exp2(m - mx)  # empty splits weigh 0
    acc = tl.load(o_part_ptr + row[:, None] * D + offs_d[None, :], mask=smask[:, None], other=0.0)
    num = tl.sum(acc * w[:, None], 0)
    den = tl.sum(l * w, 0)
    o = num / tl.where(den == 0.0, 1.0, den)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d, cast(o, out_ptr.dtype.element_ty, INTERPRET))


def supported(head_dim: int, block_size: int) -> bool:
    """Power-of-two head dims ≥ 16 (tl.arange / tl.dot); any block size ≥ 1."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0 and block_size >= 1


def num_splits(batch: int, kv_heads: int, max_len: int | None, sms: int, block_n: int) -> int:
    """About two programs per SM over the batch's (sequence, kv head) pairs; with a host hint of the longest
    length, no split shorter than 4 tiles (each split costs a partial write + read of H·D fp32 per sequence)."""
    splits = -(-2 * sms // (batch * kv_heads))
    if max_len is not None:
        splits = min(splits, -(-max_len // (4 * block_n)))
    return max(1, min(splits, 256))


def decode(
    q: torch.Tensor,  # [B, H, D] one query token per sequence, last dim contiguous
    k_cache: torch.Tensor,  # [blocks, BS, KVH, D] one layer's key pool, last dim contiguous
    v_cache: torch.Tensor,  # [blocks, BS, KVH, D]
    block_tables: torch.Tensor,  # [slots, max_blocks] int32: pool block of each slot's i-th block
    slots: torch.Tensor,  # [B] int64 slot of each sequence
    seq_lens: torch.Tensor,  # [B] keys of each sequence (its new token included; 0 = padding, output 0)
    scale: float,
    max_len: int | None = None,  # host hint of max(seq_lens) (None under CUDA graphs): caps the split count
    block_n: int = 64,
    splits: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Returns o [B, H, D] in q.dtype; query head h attends kv head h // (H / KVH)."""
    B, H, D = q.shape
    _, BS, KVH, _ = k_cache.shape
    if H % KVH or not supported(D, BS):
        raise ValueError(f"unsupported paged attention shape: H={H}, KVH={KVH}, D={D}, block size {BS}")
    for t in (q, k_cache, v_cache):
        if t.stride(-1) != 1:
            raise ValueError("q and the KV pools need a contiguous last dim")
    G = H // KVH
    if splits is None:
        splits = num_splits(B, KVH, max_len, num_sms(q.device), block_n)
    o_part = torch.empty(B, H, splits, D, dtype=torch.float32, device=q.device)
    m_part = torch.empty(B, H, splits, dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    interp = interpreting()
    _split_kernel[(B, KVH, splits)](
        q, k_cache, v_cache, block_tables, slots, seq_lens, o_part, m_part, l_part,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        scale * LOG2E, splits,  # a run-time value: one compiled kernel serves every batch size
        G=G, BG=max(16, triton.next_power_of_2(G)), D=D, BS=BS, BN=block_n, INTERPRET=interp,
        num_warps=num_warps, num_stages=num_stages,
    )
    out = torch.empty_like(q)
    _reduce_kernel[(B, H)](o_part, m_part, l_part, out, out.stride(0), out.stride(1), splits,
                           D=D, SP2=triton.next_power_of_2(splits), INTERPRET=interp)
    return out
