"""Torch reference of RMSNorm as the original code computes it: statistics in fp32, the normalised value cast
back to the input dtype, then multiplied by the weight (in the weight's dtype). The twins of the fused kernels
(fused_ops.py) and the path off CUDA.
"""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., N], weight [N] -> weight · x / rms(x) [..., N] (fp64 stays fp64: the tests' oracle)."""
    xf = x.float() if x.dtype != torch.float64 else x
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rms_norm_gate(x: torch.Tensor, gate_logits: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x, gate_logits [T, N], weight [N] -> sigmoid(gate_logits) · rms_norm(x) [T, N]: the lightning layer's
    output norm and gate."""
    return torch.sigmoid(gate_logits) * rms_norm(x, weight, eps)
