"""Weight-only int8 quantization (`quantize_(model, "int8")`), a transform applied to a built model.

Per-output-channel symmetric int8: for each output row r of a weight W [out, in],
`scale[r] = max_k |W[r, k]| / 127` (computed in fp32) and `q[r, k] = round(W[r, k] / scale[r])` in [-127, 127].
Every nn.Linear becomes an `Int8Linear` (int8 `weight` [out, in] + fp32 `weight_scale` [out]) and the stacked
experts become `Int8MoEExperts` (int8 `w13`/`w2` + fp32 `w13_scale` [E, 2I] / `w2_scale` [E, H]), except the
modules the official int8 recipe keeps in bf16 (`modules_to_not_convert`, docs/model.md §2.1): `lm_head`,
`embed_tokens`, the router `block_sparse_moe.gate` (routing decisions are discrete: a flipped top-2 choice
costs more than any rounding); norms are not Linear layers and stay as they are.

Scales are kept in fp32, not the model dtype: a bf16 scale would add a per-channel gain error of up to 2^-9
that is systematic (the same for every token, it does not average out like the per-weight rounding), while the
fp32 scales cost 4 bytes per output channel, 0.07 % of the int8 weight bytes of Text-01 (4 / 6144 per row).

Quantization goes module by module: a module's float weight is released as soon as its int8 replacement is
installed, so the peak is the float model plus one module's int8 copy (and a bounded fp32 work chunk), never
the model twice. On a model on the meta device the same code only builds the quantized structure, which is
how an int8 checkpoint is loaded (weights.py: quantize the meta model, allocate, copy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import minimax01.kernels as kernels
from minimax01.config import MiniMaxConfig
from minimax01.errors import CheckpointError, ConfigError
from minimax01.model.moe import MoEExperts

QUANT_METHOD = "minimax01-int8"  # `quantization_config.quant_method` written to config.json
METHODS = ("int8",)
# Module names (suffixes) kept in the model dtype, the official recipe's list (docs/model.md §2.1; `coefficient`
# names the shared-expert mixer, absent in Text-01).
MODULES_TO_NOT_CONVERT = ("lm_head", "embed_tokens", "block_sparse_moe.gate", "coefficient")
_QMAX = 127  # symmetric: -128 is never produced, so q and -q are both representable
_CHUNK_ELEMS = 1 << 26  # fp32 work buffer of quantize_weight: 256 MiB at most


def quantize_weight(w: torch.Tensor, absmax_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., out, in] float -> (q [..., out, in] int8, scale [..., out] fp32), per-row symmetric.
    Works chunk by chunk of rows so that the fp32 copy never exceeds `_CHUNK_ELEMS` elements. All-zero rows
    get the smallest positive scale (q = 0, dequantizes to exactly 0).

    `absmax_reduce` (in place, for a row-parallel shard whose `in` dim is split across ranks) turns each row's
    local max |w| into the max over the whole row, so every rank quantizes with the scale one process would use:
    int8 results then do not depend on the parallel layout. Ranks of a group hold equal shapes, so they make the
    same number of calls."""
    k = w.shape[-1]
    rows = w.reshape(-1, k)  # [R, in] (a view for the contiguous weights of the model)
    q = torch.empty(rows.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(rows.shape[0], dtype=torch.float32, device=w.device)
    step = max(1, _CHUNK_ELEMS // max(k, 1))
    for lo in range(0, rows.shape[0], step):
        chunk = rows[lo:lo + step].float()  # [r, in]
        absmax = chunk.abs().amax(dim=-1)  # [r]
        if absmax_reduce is not None:
            absmax = absmax_reduce(absmax)
        s = (absmax / _QMAX).clamp_min(torch.finfo(torch.float32).tiny)  # [r]
        q[lo:lo + step] = torch.round(chunk / s[:, None]).clamp_(-_QMAX, _QMAX).to(torch.int8)
        scale[lo:lo + step] = s
    return q.reshape(w.shape), scale.reshape(w.shape[:-1])


class Int8Linear(nn.Module):
    """Bias-free linear layer with int8 weight [out, in] and fp32 per-output-channel `weight_scale` [out]."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, in] int8
        self.weight_scale = nn.Parameter(weight_scale, requires_grad=False)  # [out] fp32

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if linear.bias is not None:
            raise ValueError("Int8Linear has no bias: MiniMax-Text-01 has no biased linear layers")
        # `absmax_reduce`: set by parallel.shard_ on row-parallel projections (see quantize_weight).
        return cls(*quantize_weight(linear.weight.detach(), getattr(linear, "absmax_reduce", None)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.w8a16_linear(x, self.weight, self.weight_scale)  # [..., in] -> [..., out]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int8MoEExperts(MoEExperts):
    """MoEExperts with int8 `w13` [E, 2I, H] / `w2` [E, H, I] and fp32 scales `w13_scale` [E, 2I] /
    `w2_scale` [E, H]. The state_dict keeps the original per-expert names, adding `*.weight_scale`."""

    def __init__(self, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
                 w2_scale: torch.Tensor) -> None:
        num_experts, two_inter, hidden = w13.shape
        with torch.device("meta"):  # the float stacks of the parent are placeholders only
            super().__init__(num_experts, hidden, two_inter // 2)
        self.w13 = nn.Parameter(w13, requires_grad=False)
        self.w2 = nn.Parameter(w2, requires_grad=False)
        self.w13_scale = nn.Parameter(w13_scale, requires_grad=False)
        self.w2_scale = nn.Parameter(w2_scale, requires_grad=False)

    @classmethod
    def from_experts(cls, experts: MoEExperts) -> Int8MoEExperts:
        w13, w13_scale = quantize_weight(experts.w13.detach())  # rows of w13[e] are w1/w3 output channels
        # w2 rows are split along `in` when experts are split by intermediate dim (parallel.shard_).
        w2, w2_scale = quantize_weight(experts.w2.detach(), getattr(experts, "w2_absmax_reduce", None))
        return cls(w13, w13_scale, w2, w2_scale)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return kernels.moe_experts_int8(x, weights, ids, self.w13, self.w2, self.w13_scale, self.w2_scale)


def quantization_config() -> dict[str, Any]:
    """The `quantization_config` entry that save_pretrained writes into config.json."""
    return {"quant_method": QUANT_METHOD, "bits": 8, "weights": "int8", "activations": "model dtype",
            "granularity": "per_output_channel", "symmetric": True, "scale_dtype": "float32",
            "modules_to_not_convert": list(MODULES_TO_NOT_CONVERT)}


def checkpoint_quantization(config: MiniMaxConfig) -> str | None:
    """The quantization a checkpoint's config.json declares ('int8'), or None for a float checkpoint."""
    entry = config.extra.get("quantization_config")
    if entry is None:
        return None
    method = entry.get("quant_method") if isinstance(entry, dict) else None
    if method != QUANT_METHOD:
        raise CheckpointError(f"config.json 'quantization_config.quant_method' is {method!r}; minimax01 loads "
                              f"only its own {QUANT_METHOD!r} checkpoints (or float checkpoints)")
    return "int8"


def _skipped(name: str) -> bool:
    return any(name == m or name.endswith("." + m) for m in MODULES_TO_NOT_CONVERT)


@torch.no_grad()
def quantize_(model: nn.Module, method: str = "int8") -> nn.Module:
    """Quantizes `model` in place (module by module, freeing each float weight as it goes) and records the
    `quantization_config` in a copy of `model.config`. Idempotent. Returns the model."""
    if method not in METHODS:
        raise ConfigError(f"unknown quantization {method!r}; available: {', '.join(METHODS)}")
    # Names only: holding the modules themselves would keep every float weight alive until the end.
    names = [n for n, m in model.named_modules()
             if (isinstance(m, nn.Linear) and not _skipped(n)) or type(m) is MoEExperts]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        new = Int8Linear.from_linear(old) if isinstance(old, nn.Linear) else Int8MoEExperts.from_experts(old)
        setattr(parent, child, new)
        del old  # the float weight is freed here unless the caller holds it
    config = getattr(model, "config", None)
    if isinstance(config, MiniMaxConfig):  # a copy: the float model this config may also describe is unchanged
        model.config = dataclasses.replace(config, extra={**config.extra,
                                                          "quantization_config": quantization_config()})
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (each shared tensor once): what the weights occupy."""
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())
