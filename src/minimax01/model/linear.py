"""The model's dense projections: nn.Linear (no bias; same parameter, same checkpoint name, same transforms:
quant.py and parallel/shard.py treat it as an nn.Linear) whose product goes through kernels.linear, so that in
prefill steps on a GPU a token's projection does not depend on how many tokens share its chunk
(kernels/linear_triton.py says why)."""

from __future__ import annotations

import torch
from torch import nn

import minimax01.kernels as kernels


class Linear(nn.Linear):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight)  # [..., in] -> [..., out]
