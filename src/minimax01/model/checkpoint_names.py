"""The checkpoint-name table: which tensor names a MiniMax-Text-01 checkpoint may hold, and which part of which
model parameter each one is.

Two naming schemes exist (docs/model.md):
- original (the released checkpoint, transformers v4): every parameter under its own name, except the experts,
  stored one tensor per expert and projection: `block_sparse_moe.experts.{e}.w1.weight` [I, H], `w3` [I, H],
  `w2` [H, I] (an int8 checkpoint adds the per-channel scales of every int8 tensor NAME as `NAME_scale`);
- transformers v5: the router as `mlp.gate.weight` and the experts stacked, `mlp.experts.gate_up_proj`
  [E, 2I, H] (per expert the w1 rows, then the w3 rows) and `mlp.experts.down_proj` [E, H, I].

The model stores the experts stacked as v5 does (`experts.w13` is gate_up_proj, `experts.w2` is down_proj: the
grouped GEMM kernels read one tensor), while its `state_dict()` keeps the original names, as views of the stacks
(`expert_parts`, used by model/moe.py), so checkpoints round-trip unchanged. The loaders (weights.py, and
parallel/loading.py for one rank's slices) accept both schemes through this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from minimax01.config import MiniMaxConfig

Index = tuple[int | slice, ...]  # a part of a tensor, as `tensor[index]`

# Names that transformers v4 saves into its state_dict although they are derived buffers, not weights: skipped
# on load (the model recomputes them in fp32).
DERIVED_BUFFERS = re.compile(r"\.self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay)$")

# Original per-expert projection -> (stacked parameter, which half of its rows: 0 = the first I, 1 = the last I,
# None = all of them).
_EXPERT_PROJECTIONS = {"w1": ("w13", 0), "w3": ("w13", 1), "w2": ("w2", None)}
_EXPERT_NAME = re.compile(r"^(.+\.experts)\.(\d+)\.(w[123]\.weight(?:_scale)?)$")


def expert_parts(num_experts: int, inter: int, int8: bool = False) -> dict[str, tuple[str, Index]]:
    """The original names of the experts' tensors, relative to the experts module (`"{e}.w1.weight"`) ->
    (stacked parameter, index of that tensor in it). `int8`: the per-channel scales too, `"{e}.w1.weight_scale"`
    in `w13_scale` at the same index (the scale stacks have the weight stacks' leading dims)."""
    parts: dict[str, tuple[str, Index]] = {}
    kinds = [("weight", "")] + ([("weight_scale", "_scale")] if int8 else [])  # (name suffix, stack suffix)
    for kind, stack_suffix in kinds:
        for e in range(num_experts):
            for proj, (stacked, half) in _EXPERT_PROJECTIONS.items():
                index = (e,) if half is None else (e, slice(half * inter, (half + 1) * inter))
                parts[f"{e}.{proj}.{kind}"] = (stacked + stack_suffix, index)
    return parts


def split_expert_name(name: str) -> tuple[str, int, str] | None:
    """`"model.layers.3.block_sparse_moe.experts.5.w1.weight"` -> (`"model.layers.3.block_sparse_moe.experts"`,
    5, `"w1.weight"`); None for a name that is not a per-expert one."""
    m = _EXPERT_NAME.match(name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


@dataclass(frozen=True)
class V5Name:
    """A transformers-v5 tensor name: one whole model parameter, standing for the original names it covers."""

    param: str  # the parameter, e.g. "model.layers.3.block_sparse_moe.experts.w13"
    covers: tuple[str, ...]  # the original names it holds, e.g. every expert's w1 and w3


def v5_names(config: MiniMaxConfig) -> dict[str, V5Name]:
    """Every transformers-v5 name of a model with `config`, and what it is."""
    parts = expert_parts(config.num_local_experts, config.intermediate_size)
    names: dict[str, V5Name] = {}
    for i in range(config.num_hidden_layers):
        old, new = f"model.layers.{i}.block_sparse_moe", f"model.layers.{i}.mlp"
        names[f"{new}.gate.weight"] = V5Name(f"{old}.gate.weight", (f"{old}.gate.weight",))
        for v5, stacked in (("gate_up_proj", "w13"), ("down_proj", "w2")):
            covers = tuple(f"{old}.experts.{name}" for name, (param, _) in parts.items() if param == stacked)
            names[f"{new}.experts.{v5}"] = V5Name(f"{old}.experts.{stacked}", covers)
    return names
