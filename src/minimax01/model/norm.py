"""RMSNorm as the original code computes it: statistics in fp32, normalised value cast back to the input
dtype, then multiplied by the weight (in the weight's dtype). These torch functions are the references of the
fused kernels (kernels/fused_ops.py); the module runs through the kernel dispatch."""

from __future__ import annotations

import torch
from torch import nn

from minimax01 import kernels


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float() if x.dtype != torch.float64 else x
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rms_norm_gate(x: torch.Tensor, gate_logits: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """sigmoid(gate_logits) · rms_norm(x): the lightning layer's output norm and gate (SPEC §3.6)."""
    return torch.sigmoid(gate_logits) * rms_norm(x, weight, eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)

    def gated(self, x: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
        """sigmoid(gate_logits) · self(x), fused on Triton. x, gate_logits [T, dim]."""
        return kernels.rms_norm_gate(x, gate_logits, self.weight, self.eps)
