"""Memory and communication model of a (tp, ep) layout: what one GPU holds, what crosses the links per token,
and the decode step time that follows from bandwidth arguments. Pure arithmetic on the config and the same
ownership rules as shard.py (so the model describes what the code does), used by `minimax01 plan`.

Assumptions (stated in the report; change them through `Hardware`, or measure them: `measured_hardware`):
- H200: 141 GB HBM at 4.8 TB/s; 90 % of it usable (CUDA context, NCCL buffers, allocator slack).
- NVLink: 450 GB/s per direction per GPU; inter-node: 50 GB/s per GPU (one 400 Gb/s NIC per GPU).
- All-reduce = ring (or hierarchical across nodes: reduce-scatter in the node, ring across nodes on 1/g of the
  data, all-gather in the node); each also pays a fixed latency (8 µs in a node, 25 µs across nodes).
- Decode is memory-bound: every weight this GPU needs for the step is read once from HBM, plus the KV cache and
  the lightning states; communication is not overlapped with compute (each layer waits for its all-reduces).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from minimax01.config import LINEAR, MiniMaxConfig, format_bytes
from minimax01.errors import ConfigError
from minimax01.parallel.group import Layout
from minimax01.parallel.shard import ownership

_ACT_BYTES = 2  # bf16 activations and communication


@dataclass(frozen=True)
class Hardware:
    gpu_bytes: float = 141e9
    usable: float = 0.90
    hbm_Bps: float = 4.8e12
    gpus_per_node: int = 8
    nvlink_Bps: float = 450e9
    internode_Bps: float = 50e9
    latency_intra_s: float = 8e-6
    latency_inter_s: float = 25e-6


@dataclass
class Plan:
    config: MiniMaxConfig
    layout: Layout
    dtype: str
    context: int
    batch: int
    weights: dict[str, int]  # bytes per GPU by part
    kv_per_token: int  # bytes per GPU per token of context
    state_per_seq: int  # lightning states, bytes per GPU per sequence
    activations: int  # bytes per GPU for one prefill chunk
    chunk: int
    max_seqs: int  # sequences of `context` tokens that fit next to the weights
    comm_per_token: dict[str, float]  # bytes sent per GPU per token per layer, by collective
    step_time: dict[str, float]  # decode step seconds, by term

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())


def measured_hardware(path: str | Path, hw: Hardware = Hardware()) -> tuple[Hardware, dict[str, Any]]:
    """`hw` with the numbers bench/decode_step.py measured on a GPU machine (its `multi-gpu-hardware-*.json`):
    HBM bandwidth = the device copy bandwidth, NVLink = the all-reduce bus bandwidth, the fixed cost of an
    all-reduce = a one-token [1, hidden] bf16 all-reduce inside a CUDA graph (how decode steps run). Returns the
    hardware and the file's content (its measured decode steps are printed beside the model's)."""
    try:
        data = json.loads(Path(path).read_text())
        measured = replace(hw, hbm_Bps=float(data["copy_Bps"]), nvlink_Bps=float(data["allreduce_bus_Bps"]),
                           latency_intra_s=float(data["allreduce_us"]["hidden states x1"]) * 1e-6)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--measured {path}: cannot read ({e})") from None
    except (KeyError, TypeError) as e:
        raise ConfigError(f"--measured {path}: missing or malformed field {e} (expected the "
                          f"multi-gpu-hardware-*.json that bench/decode_step.py writes)") from None
    return measured, data


def measured_comparison(data: dict[str, Any], hw: Hardware, preset: str = "text-01") -> list[str]:
    """Report lines: each decode step the measurement file holds (layout, batch) beside this model's estimate
    for the same layers, context and layout with the measured hardware."""
    layers, context = int(data.get("layers", 8)), int(data.get("context", 1024))
    config = MiniMaxConfig.preset_slice(preset, layers)
    lines = [f"Measured on {data.get('gpus', '?')} x {data.get('gpu', 'GPU')} ({layers} layers, {context}-token "
             f"context, random weights): model vs measured decode step"]
    for key, ms in sorted(data.get("decode_step_ms", {}).items()):
        tp, batch = (int(x) for x in key.removeprefix("tp").split(" batch"))
        model = sum(make_plan(config, context, tp, tp=tp, batch=batch, hw=hw).step_time.values())
        lines.append(f"  {tp} GPU(s), batch {batch:>3}: model {model * 1e3:7.3f} ms, measured {ms:7.3f} ms")
    return lines


def rank_weight_bytes(config: MiniMaxConfig, layout: Layout, dtype: str = "bf16") -> dict[str, int]:
    """Bytes of weights one GPU holds (rank 0; every rank holds the same amount). int8 follows
    `MiniMaxConfig.weight_bytes`: int8 Linear weights + one fp32 scale per output channel, embeddings, lm_head,
    router and norms in bf16."""
    if dtype not in ("bf16", "fp16", "int8", "fp8"):
        raise ConfigError(f"unknown dtype {dtype!r} (expected bf16, fp16, int8 or fp8)")
    own = ownership(config, layout)
    h, D, L = config.hidden_size, config.head_dim, config.num_hidden_layers
    Hl, KVl = own.heads[1] - own.heads[0], own.kv_heads[1] - own.kv_heads[0]
    El, Il = own.experts[1] - own.experts[0], own.inter[1] - own.inter[0]
    quant = dtype in ("int8", "fp8")

    def linear(out_ch: int, in_ch: int) -> int:
        return out_ch * in_ch * (1 if quant else 2) + (4 * out_ch if quant else 0)

    attention = 0
    for t in config.attn_type_list:
        if t == LINEAR:  # qkv_proj, output_gate, norm, out_proj (row-parallel: all h output channels)
            attention += linear(3 * Hl * D, h) + linear(Hl * D, h) + 2 * Hl * D + linear(h, Hl * D)
        else:
            attention += linear(Hl * D, h) + 2 * linear(KVl * D, h) + linear(h, Hl * D)
    experts = L * El * (linear(2 * Il, h) + linear(h, Il))
    embeddings = 2 * config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    router_norms = 2 * (L * (config.num_local_experts * h + 2 * h) + h)
    return {"attention": attention, "experts": experts, "embeddings + lm_head": embeddings,
            "router + norms": router_norms}


def all_reduce_s(payload: float, ranks: list[int], hw: Hardware) -> float:
    """Time of one all-reduce of `payload` bytes over `ranks` (global ranks, gpus_per_node per node)."""
    n = len(ranks)
    if n == 1:
        return 0.0
    nodes = len({r // hw.gpus_per_node for r in ranks})
    if nodes == 1:
        return hw.latency_intra_s + 2 * (n - 1) / n * payload / hw.nvlink_Bps
    g = n // nodes  # GPUs of the group in each node
    intra = 2 * (g - 1) / g * payload / hw.nvlink_Bps if g > 1 else 0.0
    inter = 2 * (nodes - 1) / nodes * (payload / g) / hw.internode_Bps
    return 2 * hw.latency_intra_s + hw.latency_inter_s + intra + inter


def make_plan(config: MiniMaxConfig, context: int, gpus: int, dtype: str = "bf16", tp: int | None = None,
              ep: int = 1, batch: int = 1, chunk: int = 8192, hw: Hardware = Hardware()) -> Plan:
    """The numbers behind `plan_report`. tp defaults to min(gpus, gpus per node)."""
    tp = tp or min(gpus, hw.gpus_per_node)
    layout = Layout(gpus, 0, tp, ep)
    own = ownership(config, layout)
    h, D = config.hidden_size, config.head_dim
    Hl, KVl = own.heads[1] - own.heads[0], own.kv_heads[1] - own.kv_heads[0]
    Il = own.inter[1] - own.inter[0]
    n_lin, n_full = len(config.linear_layers), len(config.full_layers)
    L, k, E = config.num_hidden_layers, config.num_experts_per_tok, config.num_local_experts
    weights = rank_weight_bytes(config, layout, dtype)
    kv_per_token = n_full * 2 * KVl * D * _ACT_BYTES
    state_per_seq = n_lin * Hl * D * D * 4  # fp32
    # Live activations of one layer for a prefill chunk (rough upper bound): residual, normed input, attention
    # output and MoE output [chunk, h]; q, k, v, gate, o [chunk, Hl*D]; per routed copy its [2*Il] SwiGLU input
    # and its [h] output; the fp32 lightning intra-block scores [Hl, 256, 256] are negligible next to these.
    activations = chunk * _ACT_BYTES * (4 * h + 5 * Hl * D + k * (2 * Il + h))
    free = hw.gpu_bytes * hw.usable - sum(weights.values()) - activations
    per_seq = context * kv_per_token + state_per_seq
    max_seqs = max(0, int(free // per_seq))

    # Communication per token per layer (bytes one GPU sends; ring all-reduce sends 2(n-1)/n of the payload).
    payload = h * _ACT_BYTES
    ring = lambda n: 2 * (n - 1) / n if n > 1 else 0.0  # noqa: E731
    comm = {
        "attention all-reduce (tp)": ring(tp) * payload,
        "lightning norm statistic (tp, fp32, lightning layers only)": ring(tp) * 4,
        "MoE all-reduce (all ranks)": ring(gpus) * payload,
        "alternative: MoE all-to-all dispatch + combine": 2 * k * payload * (gpus - 1) / gpus if ep > 1 else 0.0,
    }

    # Decode step (batch sequences, one token each).
    touched = E * (1 - (1 - k / E) ** batch)  # expected distinct experts hit per layer
    expert_read = weights["experts"] * min(1.0, touched / E)  # local experts are a uniform share of all experts
    hbm = (weights["attention"] + expert_read + weights["router + norms"]
           + config.vocab_size * h * 2  # lm_head is read whole; the embedding only row by row
           + batch * (context * kv_per_token + 2 * state_per_seq))  # KV read; states read and written
    tp_ranks = list(range(tp))
    world = list(range(gpus))
    attn_s = L * all_reduce_s(batch * payload, tp_ranks, hw) + n_lin * all_reduce_s(batch * 4, tp_ranks, hw)
    moe_s = L * all_reduce_s(batch * payload, world, hw)
    step = {"HBM reads": hbm / hw.hbm_Bps, "attention all-reduces": attn_s, "MoE all-reduces": moe_s}
    return Plan(config, layout, dtype, context, batch, weights, kv_per_token, state_per_seq, activations, chunk,
                max_seqs, comm, step)


def plan_report(config: MiniMaxConfig, context: int, gpus: int, dtype: str = "bf16", tp: int | None = None,
                ep: int = 1, batch: int = 1, chunk: int = 8192, hw: Hardware = Hardware()) -> str:
    """Human-readable plan for `minimax01 plan`."""
    p = make_plan(config, context, gpus, dtype, tp, ep, batch, chunk, hw)
    lay = p.layout
    nodes = -(-gpus // hw.gpus_per_node)
    step_total = sum(p.step_time.values())
    lines = [
        f"Layout: {gpus} GPU(s) on {nodes} node(s); attention tp={lay.tp} "
        f"(replicated {gpus // lay.tp}x), experts in ep={lay.ep} group(s), each expert split {lay.moe_tp} way(s); "
        f"weights {dtype}",
        "Memory per GPU:",
        *[f"  weights, {name:<22} {format_bytes(b):>12}" for name, b in p.weights.items()],
        f"  weights, total                  {format_bytes(p.weight_bytes):>12}",
        f"  softmax KV cache per token      {format_bytes(p.kv_per_token):>12}  "
        f"({format_bytes(p.kv_per_token * context)} per {context}-token sequence)",
        f"  lightning state per sequence    {format_bytes(p.state_per_seq):>12}  (fp32, any length)",
        f"  activations per {p.chunk}-token prefill chunk {format_bytes(p.activations)} (rough upper bound)",
        f"  fits: {p.max_seqs} sequence(s) of {context} tokens in {hw.usable:.0%} of {hw.gpu_bytes / 1e9:.0f} GB"
        + ("  -- DOES NOT FIT" if p.max_seqs == 0 else ""),
        "Communication per token per layer (bytes each GPU sends):",
        *[f"  {name:<56} {v:>10.0f} B" for name, v in p.comm_per_token.items()],
        f"Decode step, batch {batch}, {context}-token context (memory-bound, communication not overlapped):",
        *[f"  {name:<24} {s * 1e3:8.3f} ms" for name, s in p.step_time.items()],
        f"  {'total':<24} {step_total * 1e3:8.3f} ms  (~{batch / step_total:.0f} tokens/s)",
        f"Assumptions: HBM {hw.hbm_Bps / 1e12:.1f} TB/s; NVLink {hw.nvlink_Bps / 1e9:.0f} GB/s per direction per GPU, "
        f"{hw.latency_intra_s * 1e6:.0f} us per all-reduce; inter-node {hw.internode_Bps / 1e9:.0f} GB/s per GPU, "
        f"{hw.latency_inter_s * 1e6:.0f} us; ring / hierarchical all-reduce.",
    ]
    return "\n".join(lines)
