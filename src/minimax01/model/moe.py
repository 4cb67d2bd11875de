"""Top-2 mixture of SwiGLU experts (docs/model.md). Router softmax in fp32, top-k, renormalised.

Expert weights are stored stacked (`w13` [E, 2I, H] = w1 rows then w3 rows, `w2` [E, H, I]) so that grouped
GEMM kernels see one tensor, but `state_dict()` exposes the original per-expert names
`experts.{e}.w1.weight` / `w3` / `w2` as views (no copy; the names come from model/checkpoint_names.py), so
checkpoints round-trip unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

import minimax01.kernels as kernels
from minimax01.config import MiniMaxConfig
from minimax01.model.checkpoint_names import expert_parts
from minimax01.model.linear import Linear


def route(router_logits: torch.Tensor, top_k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax in fp32 -> top-k -> renormalise -> model dtype (kernels.moe_route). Returns (weights [T, k],
    expert ids [T, k])."""
    return kernels.moe_route(router_logits, top_k, dtype)


class MoEExperts(nn.Module):
    def __init__(self, num_experts: int, hidden: int, inter: int) -> None:
        super().__init__()
        self.num_experts, self.inter = num_experts, inter
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * inter, hidden))  # [E, 2I, H]: w1 ; w3
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, inter))  # [E, H, I]

    def original_views(self) -> dict[str, torch.Tensor]:
        """Original checkpoint names -> views into the stacked parameters (int8 experts, quant.Int8MoEExperts:
        their per-channel scales too)."""
        int8 = self.w13.dtype == torch.int8
        return {name: getattr(self, stacked)[index]
                for name, (stacked, index) in expert_parts(self.num_experts, self.inter, int8).items()}

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 - torch hook signature
        for name, view in self.original_views().items():
            destination[prefix + name] = view if keep_vars else view.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # noqa: ANN001
                              unexpected_keys, error_msgs):
        with torch.no_grad():
            for name, view in self.original_views().items():
                key = prefix + name
                if key not in state_dict:
                    missing_keys.append(key)
                    continue
                if state_dict[key].shape != view.shape:
                    error_msgs.append(f"size mismatch for {key}: {tuple(state_dict[key].shape)} vs {tuple(view.shape)}")
                    continue
                view.copy_(state_dict[key])
        known = {prefix + name for name in self.original_views()}
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in known)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        # x [T, hidden], weights/ids [T, k] -> [T, hidden]; quant.Int8MoEExperts overrides this
        return kernels.moe_experts(x, weights, ids, self.w13, self.w2)


class SparseMoE(nn.Module):
    """`block_sparse_moe` of the original: router `gate` + `experts`."""

    def __init__(self, config: MiniMaxConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = Linear(config.hidden_size, config.num_local_experts)
        self.experts = MoEExperts(config.num_local_experts, config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden]
        weights, ids = route(self.gate(x), self.top_k, x.dtype)
        return self.experts(x, weights, ids)
