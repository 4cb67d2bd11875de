"""The sharding transform: `shard_(model, groups)` turns a built MiniMaxLM (full weights, or still on
the meta device before sharded loading) into this rank's part, in place. The model code is not forked: its
modules keep their forward methods and parameter names and only see fewer heads / experts; the collectives
enter through forward hooks on the attention modules and two small modules (the lightning norm statistic,
the expert mixture).

What each rank keeps (see group.py for the Layout):
- Lightning layers: heads [h0, h1) of `qkv_proj` (rows are per-head interleaved [q|k|v], docs/model.md §3.1, so
  a contiguous row block is whole heads), `output_gate` rows and `norm.weight` of those heads, `out_proj`
  columns (row-parallel: partial sums all-reduced over the attention block), decay rates of those heads.
  The RMSNorm spans all heads (docs/model.md §3.6): its sum of squares is all-reduced, eps and mean over the
  full width.
- Softmax layers: q heads [h0, h1); kv heads split when tp divides num_key_value_heads, otherwise each rank
  keeps the one kv head its q heads read (GQA maps q head h to kv head h // (H / KVH)), replicated over the
  tp / KVH ranks that share it; `o_proj` row-parallel.
- MoE: experts [e0, e1) and intermediate slice [i0, i1) of each (w1, w3 rows; w2 columns); router replicated.
- Embeddings, lm_head, layer norms: replicated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from minimax01.config import MiniMaxConfig
from minimax01.errors import ConfigError
from minimax01.model.attention import SoftmaxAttention
from minimax01.model.checkpoint_names import Index, split_expert_name
from minimax01.model.lightning import LightningAttention
from minimax01.model.model import MiniMaxLM
from minimax01.model.moe import MoEExperts, SparseMoE, route
from minimax01.model.norm import RMSNorm
from minimax01.parallel.group import Layout, ParallelGroups, Reduce, split_range

_ATTN_PARAM = re.compile(r"^model\.layers\.\d+\.self_attn\.(qkv_proj|output_gate|norm|out_proj|q_proj|k_proj|v_proj|"
                         r"o_proj)\.weight$")
_STACKED_EXPERTS = re.compile(r"\.experts\.(w13|w2)$")
_ALL = slice(None)


@dataclass(frozen=True)
class Ownership:
    """The [lo, hi) ranges of the full model one rank holds."""

    heads: tuple[int, int]
    kv_heads: tuple[int, int]
    experts: tuple[int, int]
    inter: tuple[int, int]


def ownership(config: MiniMaxConfig, layout: Layout) -> Ownership:
    """Raises ConfigError when (tp, ep) does not divide the model evenly."""
    H, KVH = config.num_attention_heads, config.num_key_value_heads
    heads = split_range(H, layout.tp, layout.tp_rank, "num_attention_heads")
    if KVH % layout.tp == 0:
        kv_heads = split_range(KVH, layout.tp, layout.tp_rank, "num_key_value_heads")
    elif layout.tp % KVH == 0:
        kv = heads[0] // (H // KVH)  # every local q head lies in this kv head's group
        kv_heads = (kv, kv + 1)
    else:
        raise ConfigError(f"tp={layout.tp} must divide num_key_value_heads ({KVH}) or be a multiple of it")
    experts = split_range(config.num_local_experts, layout.ep, layout.ep_rank, "num_local_experts")
    inter = split_range(config.intermediate_size, layout.moe_tp, layout.moe_tp_rank,
                        f"intermediate_size (split processes/ep = {layout.moe_tp} ways)")
    return Ownership(heads, kv_heads, experts, inter)


def param_index(name: str, config: MiniMaxConfig, own: Ownership) -> Index | None:
    """This rank's part of the full tensor called `name` (original checkpoint name, docs/model.md §2.1): a
    tuple of slices, () when replicated, None when the rank holds none of it (an expert of another group)."""
    D = config.head_dim
    (h0, h1), (k0, k1), (i0, i1) = own.heads, own.kv_heads, own.inter
    m = _ATTN_PARAM.match(name)
    if m:
        return {
            "qkv_proj": (slice(3 * D * h0, 3 * D * h1),),
            "output_gate": (slice(D * h0, D * h1),),
            "norm": (slice(D * h0, D * h1),),
            "q_proj": (slice(D * h0, D * h1),),
            "k_proj": (slice(D * k0, D * k1),),
            "v_proj": (slice(D * k0, D * k1),),
            "out_proj": (_ALL, slice(D * h0, D * h1)),
            "o_proj": (_ALL, slice(D * h0, D * h1)),
        }[m.group(1)]
    expert = split_expert_name(name)
    if expert is not None and expert[2].endswith(".weight"):
        _, e, projection = expert
        if not own.experts[0] <= e < own.experts[1]:
            return None
        return (_ALL, slice(i0, i1)) if projection == "w2.weight" else (slice(i0, i1),)
    return ()


def param_parts(param: str, config: MiniMaxConfig, own: Ownership) -> list[Index]:
    """This rank's part of the full model parameter `param`, as slices of it to concatenate along dim 1: the
    one slice of `param_index`, except for the stacked experts (`experts.w13` [E, 2I, H] = w1 rows then w3 rows,
    `experts.w2` [E, H, I]): this rank's experts and, of each, its intermediate slice (twice in w13)."""
    m = _STACKED_EXPERTS.search(param)
    if m is None:
        return [param_index(param, config, own)]
    (e0, e1), (i0, i1), inter = own.experts, own.inter, config.intermediate_size
    if m.group(1) == "w13":
        return [(slice(e0, e1), slice(i0, i1)), (slice(e0, e1), slice(inter + i0, inter + i1))]
    return [(slice(e0, e1), _ALL, slice(i0, i1))]


class ShardedRMSNorm(RMSNorm):
    """RMSNorm over a width split across ranks: the local sum of squares is all-reduced, then divided by the
    FULL width, so every rank normalises its slice exactly as the unsharded norm would."""

    def __init__(self, weight: nn.Parameter, eps: float, full_dim: int, reduce: Reduce) -> None:
        super().__init__(weight.shape[0], eps)
        self.weight = weight
        self.full_dim = full_dim
        self.reduce = reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, local width]
        xf = x.float() if x.dtype != torch.float64 else x
        sum_sq = self.reduce(xf.pow(2).sum(-1, keepdim=True))  # [T, 1] fp32, over all ranks' slices
        normed = xf * torch.rsqrt(sum_sq / self.full_dim + self.eps)
        return self.weight * normed.to(x.dtype)

    def gated(self, x: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
        # The fused kernel's statistics would cover this rank's slice only: all-reduced norm, then the gate.
        return torch.sigmoid(gate_logits) * self(x)


class ShardedMoE(nn.Module):
    """`block_sparse_moe` holding experts [first, first + n) (and possibly a slice of each): routes every token
    with the replicated router, computes only the assignments to local experts, and all-reduces the partial
    sums. Keeps the submodule names `gate` / `experts`, so parameter names are unchanged."""

    def __init__(self, moe: SparseMoE, first_expert: int, num_experts: int, reduce: Reduce | None) -> None:
        super().__init__()
        self.gate, self.experts, self.top_k = moe.gate, moe.experts, moe.top_k
        self.first_expert, self.num_experts = first_expert, num_experts  # num_experts: the full model's
        self.reduce = reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden], identical on every rank
        weights, ids = route(self.gate(x), self.top_k, x.dtype)  # [T, k] over ALL experts
        if self.experts.num_experts == self.num_experts:
            out = self.experts(x, weights, ids)
        else:
            local = (ids >= self.first_expert) & (ids < self.first_expert + self.experts.num_experts)  # [T, k]
            tok, k = local.nonzero(as_tuple=True)  # the (token, choice) pairs routed here
            # One row per local assignment (a token whose two experts are both here appears twice).
            y = self.experts(x[tok], weights[tok, k][:, None], (ids[tok, k] - self.first_expert)[:, None])  # [n, h]
            out = torch.zeros_like(x).index_add_(0, tok, y)
        return self.reduce(out) if self.reduce is not None else out


def _narrow_(module: nn.Module, index: Index) -> None:
    """Replaces `module.weight` by its part `index` (a copy, so the full tensor can be freed)."""
    old = module.weight
    module.weight = nn.Parameter(old.data[index].clone(), requires_grad=old.requires_grad)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape


def _reduce_output(reduce: Reduce):  # noqa: ANN202 - forward-hook signature
    # On the attention module, whose output is its out_proj / o_proj output (row-parallel partial sums): the
    # hook survives a later replacement of the projection module (e.g. by quant.Int8Linear).
    return lambda _module, _inputs, out: reduce(out)


def _shard_experts_(experts: MoEExperts, name: str, config: MiniMaxConfig, own: Ownership) -> None:
    """Keeps this rank's part of the stacked experts module `name` (the same slices sharded loading reads)."""
    for stacked in ("w13", "w2"):
        full = getattr(experts, stacked)
        part = torch.cat([full.data[index] for index in param_parts(f"{name}.{stacked}", config, own)], dim=1)
        setattr(experts, stacked, nn.Parameter(part, requires_grad=full.requires_grad))
    (e0, e1), (i0, i1) = own.experts, own.inter
    experts.num_experts, experts.inter = e1 - e0, i1 - i0


@torch.no_grad()
def shard_(model: MiniMaxLM, groups: ParallelGroups) -> MiniMaxLM:
    """Keeps only this rank's part of `model` (in place) and installs the collectives of `groups`.
    Works on the meta device too (sharded loading shards first, then allocates and reads only its part)."""
    if getattr(model, "parallel", None) is not None:
        raise ValueError("model is already sharded")
    config = model.config
    own = ownership(config, groups.layout)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, RMSNorm)):
            index = param_index(f"{name}.weight", config, own)
            if index:
                _narrow_(module, index)
    tp = groups.tp_reduce
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if isinstance(attn, LightningAttention):
            h0, h1 = own.heads
            attn.num_heads = h1 - h0
            attn._decay = attn._decay[h0:h1]  # fp32 per-head rates, kept off the module's buffers
            if tp is not None:
                attn.norm = ShardedRMSNorm(attn.norm.weight, attn.norm.eps, config.inner_size, tp)
                attn.register_forward_hook(_reduce_output(tp))
                attn.out_proj.absmax_reduce = groups.tp_max  # row-parallel: see quant.quantize_weight
        elif isinstance(attn, SoftmaxAttention):
            attn.num_heads = own.heads[1] - own.heads[0]
            attn.num_kv_heads = own.kv_heads[1] - own.kv_heads[0]
            if tp is not None:
                attn.register_forward_hook(_reduce_output(tp))
                attn.o_proj.absmax_reduce = groups.tp_max
        moe = layer.block_sparse_moe
        if groups.layout.world > 1:
            _shard_experts_(moe.experts, f"model.layers.{i}.block_sparse_moe.experts", config, own)
            moe.experts.w2_absmax_reduce = groups.moe_tp_max  # None when each expert is whole on its rank
            layer.block_sparse_moe = ShardedMoE(moe, own.experts[0], config.num_local_experts, groups.moe_reduce)
    model.parallel = groups
    return model
