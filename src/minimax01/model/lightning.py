"""Lightning (linear) attention layer, docs/model.md §3. Per-head interleaved qkv, SiLU on q, k and v, per-layer decay
from the GLOBAL layer index, one RMSNorm over all heads (eps 1e-6), sigmoid output gate, out_proj."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import minimax01.kernels as kernels
from minimax01.cache import BatchInfo, StateStore
from minimax01.config import MiniMaxConfig
from minimax01.kernels.lightning_ref import layer_decay_rates
from minimax01.model.linear import Linear
from minimax01.model.norm import RMSNorm


class LightningAttention(nn.Module):
    def __init__(self, config: MiniMaxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.block = config.block_size
        inner = config.inner_size
        self.qkv_proj = Linear(config.hidden_size, 3 * inner)
        self.output_gate = Linear(config.hidden_size, inner)
        self.norm = RMSNorm(inner, eps=config.lightning_norm_eps)
        self.out_proj = Linear(inner, config.hidden_size)
        # fp32 decay rates kept OUT of the module's buffers so that model.to(bf16) never rounds them
        # (transformers stores them as buffers and loses precision, docs/model.md §10 #4).
        self._decay = layer_decay_rates(self.num_heads, layer_idx, config.num_hidden_layers)

    def decay(self, device: torch.device) -> torch.Tensor:
        if self._decay.device != device:
            self._decay = self._decay.to(device)
        return self._decay  # [H] fp32

    def forward(self, x: torch.Tensor, batch: BatchInfo, store: StateStore) -> torch.Tensor:
        # x: [T, hidden] normed layer input of all sequences in the step
        T = x.shape[0]
        qkv = F.silu(self.qkv_proj(x)).view(T, self.num_heads, 3 * self.head_dim)  # per-head [q|k|v]
        q, k, v = qkv.split(self.head_dim, dim=-1)  # each [T, H, D]
        states = store.lightning[store.linear_index[self.layer_idx]]  # [slots, H, D, D] fp32
        decay = self.decay(x.device)
        if batch.is_decode:
            o = kernels.lightning_decode(q, k, v, decay, states, batch.slots_t)
        else:
            o = kernels.lightning_prefill(q, k, v, decay, batch.cu_seqlens, states, batch.slots, self.block,
                                          cu_seqlens_t=batch.cu_seqlens_t, slots_t=batch.slots_t)
        # One RMSNorm over all heads jointly, then the sigmoid gate, fused on Triton: [T, H*D]
        o = self.norm.gated(o.reshape(T, -1), self.output_gate(x))
        return self.out_proj(o)
