"""Torch reference of the softmax layers' ops: partial RoPE, causal GQA attention of one sequence, and
attention over the paged KV pool (gather each sequence's keys and values through the block table, then
`attend_one`). The twins of the Triton kernels (fused_ops.rope_, paged_attention.decode) and the path off
CUDA and for prefill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def apply_partial_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D]; rotates x[..., :rotary_dim] with half-split pairing (i, i + rotary_dim/2), computed
    in fp32 and cast back once; the remaining dims pass through."""
    rd = inv_freq.numel() * 2
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [T, rd/2] fp32
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, rd]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = emb.cos().to(acc), emb.sin().to(acc)
    xr = x[..., :rd].to(acc)
    rotated = torch.cat((-xr[..., rd // 2:], xr[..., : rd // 2]), dim=-1)
    out = (xr * cos + rotated * sin).to(x.dtype)
    return torch.cat((out, x[..., rd:]), dim=-1) if rd < x.shape[-1] else out


def rope_ref_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> None:
    """Twin of fused_ops.rope_: `apply_partial_rope` on q [T, H, D] and on k [T, KVH, D], in place, rotating
    only the first 2·len(inv_freq) dims."""
    rd = 2 * inv_freq.numel()
    for x in (q, k):
        x[..., :rd] = apply_partial_rope(x[..., :rd], positions, inv_freq)


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
               max_mask_elems: int = 1 << 26, fused: bool | None = None) -> torch.Tensor:
    """Causal GQA attention of one sequence's n newest queries over its L cached keys (the queries are the
    last n positions). q [n, H, D], k/v [L, KVH, D] -> [n, H, D].

    `fused` (default: on CUDA) builds no mask and repeats no K/V, so SDPA's flash / memory-efficient kernels
    run in O(n) memory at any L (see `_attend_fused`); otherwise boolean masks over query slices are used."""
    if q.is_cuda if fused is None else fused:
        return _attend_fused(q, k, v, scale)
    n, L = q.shape[0], k.shape[0]
    kb, vb = k.transpose(0, 1)[None], v.transpose(0, 1)[None]  # [1, KVH, L, D]
    qb = q.transpose(0, 1)[None]  # [1, H, n, D]
    if n == 1:  # decode: every cached key is visible, no mask needed
        return F.scaled_dot_product_attention(qb, kb, vb, scale=scale, enable_gqa=True)[0].transpose(0, 1)
    if n == L:  # whole sequence in this step: plain causal (lets SDPA pick its flash backend)
        return F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale,
                                              enable_gqa=True)[0].transpose(0, 1)
    # Continuation chunk: query i sits at position L-n+i and sees keys 0..L-n+i. Queries go in slices so the
    # boolean mask stays bounded at long context.
    out = torch.empty_like(q)
    step = max(1, max_mask_elems // L)
    key_pos = torch.arange(L, device=q.device)[None, :]
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        mask = key_pos <= (L - n + torch.arange(lo, hi, device=q.device))[:, None]  # [hi-lo, L]
        o = F.scaled_dot_product_attention(qb[:, :, lo:hi], kb, vb, attn_mask=mask, scale=scale, enable_gqa=True)
        out[lo:hi] = o[0].transpose(0, 1)
    return out


def _attend_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """attend_one without masks or repeated K/V. q [n, H, D], k/v [L, KVH, D] -> [n, H, D]; query head h uses
    kv head h // g (g = H / KVH)."""
    n, H, D = q.shape
    L, KVH = k.shape[:2]
    g = H // KVH
    kb, vb = k.transpose(0, 1)[None], v.transpose(0, 1)[None]  # [1, KVH, L, D] views of the cache
    if n == 1:
        if q.dtype in (torch.float16, torch.bfloat16):
            # Flash takes GQA natively: 1.5 ms at L = 1M on an H100 (4 GiB of K/V read at ~2.8 TB/s), where the
            # folded form below ran 12 ms (SDPA picked cuDNN's kernel for it; bench/longctx.py).
            qb = q.transpose(0, 1)[None]  # [1, H, 1, D]
            return F.scaled_dot_product_attention(qb, kb, vb, scale=scale, enable_gqa=True)[0].transpose(0, 1)
        # fp32 has no flash kernel and the memory-efficient one no GQA (SDPA would fall back to repeating K/V).
        # Decode sees every key, so the g query heads of a kv head can ride in the query-length dimension:
        # q [1, KVH, g, D] against k [1, KVH, L, D] has equal head counts.
        o = F.scaled_dot_product_attention(q.reshape(1, KVH, g, D), kb, vb, scale=scale)  # [1, KVH, g, D]
        return o.reshape(1, H, D)
    # A chunk: query i sits at position L-n+i, i.e. the causal diagonal is aligned to the lower right, which
    # SDPA's flash / memory-efficient kernels take natively (no [n, L] mask). Folding heads into the query
    # length would break that alignment, so each kv head's g query heads go together against an expanded
    # (stride-0, not copied) view of that head's keys.
    bias = causal_lower_right(n, L)
    qb = q.transpose(0, 1)[None]  # [1, H, n, D]
    out = torch.empty_like(q)
    for h in range(KVH):
        heads = slice(h * g, (h + 1) * g)
        o = F.scaled_dot_product_attention(qb[:, heads], kb[:, h:h + 1].expand(1, g, L, D),
                                           vb[:, h:h + 1].expand(1, g, L, D), attn_mask=bias, scale=scale)
        out[:, heads] = o[0].transpose(0, 1)
    return out


def paged_attention_ref(
    q: torch.Tensor,  # [T, H, D] new queries of all sequences, concatenated
    k_cache: torch.Tensor,  # [blocks, block_size, KVH, D] one layer's key pool, this step's keys written
    v_cache: torch.Tensor,  # [blocks, block_size, KVH, D]
    block_tables: torch.Tensor,  # [slots, max_blocks] int32: pool block of each slot's i-th block
    slots: list[int],  # [B] slot of each sequence
    cu_seqlens: list[int],  # [B+1] boundaries of each sequence's queries in T
    seq_lens: list[int],  # [B] cached keys of each sequence, its new tokens included
    scale: float,
) -> torch.Tensor:
    """Each sequence's queries (its newest tokens) attend causally over its whole cache: a host loop that
    gathers the sequence's K/V from the pool through its block table and runs `attend_one`. Returns [T, H, D]
    in q.dtype; a sequence without cached keys gives zeros."""
    bs, kvh, d = k_cache.shape[1:]
    k_pool, v_pool = k_cache.reshape(-1, kvh, d), v_cache.reshape(-1, kvh, d)  # [blocks·block_size, KVH, D]
    out = torch.zeros_like(q)
    for b, (slot, n) in enumerate(zip(slots, seq_lens)):
        lo, hi = cu_seqlens[b], cu_seqlens[b + 1]
        if hi > lo and n:
            t = torch.arange(n, device=q.device)
            idx = block_tables[slot, t // bs].long() * bs + t % bs  # [n] flat pool positions
            out[lo:hi] = attend_one(q[lo:hi], k_pool[idx].to(q.dtype), v_pool[idx].to(q.dtype), scale)
    return out


def paged_decode_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     slots: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Twin of paged_attention.decode, one query per sequence: q [B, H, D], slots / seq_lens [B] device tensors
    (read on the host: a sync) -> [B, H, D]."""
    return paged_attention_ref(q, k_cache, v_cache, block_tables, slots.tolist(), list(range(q.shape[0] + 1)),
                               seq_lens.tolist(), scale)
