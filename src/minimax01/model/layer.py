"""Decoder layer, docs/model.md §5: post-norm DeepNorm residuals whose residual branch is the NORMED input:
    xn = input_layernorm(h);           h1 = α_attn·xn + β_attn·Attn(xn)
    yn = post_attention_layernorm(h1); h2 = α_mlp·yn + β_mlp·MoE(yn)
"""

from __future__ import annotations

import torch
from torch import nn

from minimax01.cache import BatchInfo, StateStore
from minimax01.config import LINEAR, MiniMaxConfig
from minimax01.model.attention import SoftmaxAttention
from minimax01.model.lightning import LightningAttention
from minimax01.model.moe import SparseMoE
from minimax01.model.norm import RMSNorm


class DecoderLayer(nn.Module):
    def __init__(self, config: MiniMaxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.is_linear = config.attn_type_list[layer_idx] == LINEAR
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = (LightningAttention if self.is_linear else SoftmaxAttention)(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.block_sparse_moe = SparseMoE(config)
        if self.is_linear:
            self.attn_alpha = config.layernorm_linear_attention_alpha
            self.attn_beta = config.layernorm_linear_attention_beta
        else:
            self.attn_alpha = config.layernorm_full_attention_alpha
            self.attn_beta = config.layernorm_full_attention_beta
        self.mlp_alpha, self.mlp_beta = config.layernorm_mlp_alpha, config.layernorm_mlp_beta

    def forward(self, h: torch.Tensor, batch: BatchInfo, store: StateStore, kv_pos: torch.Tensor) -> torch.Tensor:
        # h: [T, hidden]
        xn = self.input_layernorm(h)
        attn = self.self_attn(xn, batch, store) if self.is_linear else self.self_attn(xn, batch, store, kv_pos)
        h = xn * self.attn_alpha + attn * self.attn_beta
        yn = self.post_attention_layernorm(h)
        return yn * self.mlp_alpha + self.block_sparse_moe(yn) * self.mlp_beta
