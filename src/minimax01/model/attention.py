"""Softmax attention layer (docs/model.md): GQA, RoPE on the first `rotary_dim` dims only (half-split pairs
inside that slice), θ from config, keys cached after RoPE in the paged KV cache of the StateStore. Unlike the
original code, pads never reach this layer: the flattened batch carries no padding. RoPE and the attention
itself run as ops of minimax01.kernels."""

from __future__ import annotations

import torch
from torch import nn

import minimax01.kernels as kernels
from minimax01.cache import BatchInfo, StateStore
from minimax01.config import MiniMaxConfig
from minimax01.model.linear import Linear


def rope_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    """inv_freq[i] = θ^(-2i/rotary_dim), i < rotary_dim/2, fp32."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float() / rotary_dim  # never meta
    return 1.0 / (theta ** exponent)


class SoftmaxAttention(nn.Module):
    def __init__(self, config: MiniMaxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim ** -0.5
        inner, kv = config.inner_size, config.num_key_value_heads * config.head_dim
        self.q_proj = Linear(config.hidden_size, inner)
        self.k_proj = Linear(config.hidden_size, kv)
        self.v_proj = Linear(config.hidden_size, kv)
        self.o_proj = Linear(inner, config.hidden_size)
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
        out = kernels.softmax_attention(q, store.k_cache[li], store.v_cache[li], store.block_table_t, self.scale,
                                        slots=batch.slots, start_pos=batch.start_pos, cu_seqlens=batch.cu_seqlens,
                                        slots_t=batch.slots_t, positions=batch.positions,
                                        is_decode=batch.is_decode, max_seq_len=batch.max_seq_len)  # [T, H, D]
        return self.o_proj(out.reshape(T, -1))
