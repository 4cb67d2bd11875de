"""RMSNorm module: statistics in fp32, the normalised value cast back to the input dtype, then multiplied by
the weight (kernels/norm_ref.py defines the arithmetic; the module runs the kernels ops)."""

from __future__ import annotations

import torch
from torch import nn

import minimax01.kernels as kernels


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)  # [..., dim]

    def gated(self, x: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
        """sigmoid(gate_logits) · self(x), fused on Triton. x, gate_logits [T, dim]."""
        return kernels.rms_norm_gate(x, gate_logits, self.weight, self.eps)
