"""Softmax attention layer, SPEC §4: GQA, RoPE on the first `rotary_dim` dims only (half-split pairs inside
that slice), θ from config, keys cached after RoPE in the paged KV cache of the StateStore. Unlike the
original code (SPEC §9 #14) pads never reach this layer: the flattened batch carries no padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from minimax01 import kernels
from minimax01.cache import BatchInfo, StateStore
from minimax01.config import MiniMaxConfig


def rope_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    """inv_freq[i] = θ^(-2i/rotary_dim), i < rotary_dim/2, fp32."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float() / rotary_dim  # never meta
    return 1.0 / (theta ** exponent)


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


class SoftmaxAttention(nn.Module):
    def __init__(self, config: MiniMaxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim ** -0.5
        inner, kv = config.inner_size, config.num_key_value_heads * config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv, bias=False)
        self.o_proj = nn.Linear(inner, config.hidden_size, bias=False)
        self._inv_freq = rope_inv_freq(config.rotary_dim, config.rope_theta)  # fp32, not a buffer (see lightning)

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        if self._inv_freq.device != device:
            self._inv_freq = self._inv_freq.to(device)
        return self._inv_freq

    def forward(self, x: torch.Tensor, batch: BatchInfo, store: StateStore, kv_pos: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden]; kv_pos: [T] flat cache positions where this step's keys/values are written
        T = x.shape[0]
        inv_freq = self.inv_freq(x.device)
        q = self.q_proj(x).view(T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(T, self.num_kv_heads, self.head_dim)
        kernels.rope_(q, k, batch.positions, inv_freq)  # in place: q and k are this step's own projections
        v = self.v_proj(x).view(T, self.num_kv_heads, self.head_dim)
        li = store.full_index[self.layer_idx]
        k_pool = store.k_cache[li].view(-1, self.num_kv_heads, self.head_dim)  # [blocks*block_size, KVH, D]
        v_pool = store.v_cache[li].view(-1, self.num_kv_heads, self.head_dim)
        k_pool[kv_pos] = k.to(k_pool.dtype)
        v_pool[kv_pos] = v.to(v_pool.dtype)
        if batch.is_decode and kernels.use_triton(x.device):
            # One token per sequence: read the pool in place through the block table, no gather and no host
            # work per sequence. In decode a token's position is its sequence's cached length before it. A CUDA
            # graph replays at other lengths than it was captured with: no host hint of the longest one there.
            out = kernels.paged_decode_attention(q, store.k_cache[li], store.v_cache[li], store.block_table_t,
                                                 batch.slots_t, batch.positions + 1, self.scale,
                                                 max_len=None if batch.graph_static else max(batch.start_pos) + 1)
            return self.o_proj(out.reshape(T, -1))
        out = torch.empty_like(q)
        for b, slot in enumerate(batch.slots):
            lo, hi = batch.cu_seqlens[b], batch.cu_seqlens[b + 1]
            if hi > lo:
                idx = store.kv_positions(slot, batch.start_pos[b] + hi - lo)
                out[lo:hi] = attend_one(q[lo:hi], k_pool[idx].to(q.dtype), v_pool[idx].to(q.dtype), self.scale)
        return self.o_proj(out.reshape(T, -1))
