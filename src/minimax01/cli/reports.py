"""`minimax01 info` and `minimax01 plan`: reports computed from a config alone (no weights are loaded)."""

from __future__ import annotations

import argparse

from pathlib import Path

from minimax01.cli.args import add_chat_format_flags, chat_setup_arg, model_dir_arg, parse_tokens
from minimax01.config import PRESETS, MiniMaxConfig, format_bytes, format_count


def load_config_arg(value: str) -> MiniMaxConfig:
    """A preset name ('text-01', 'tiny'), a checkpoint directory or a config.json path."""
    if value in PRESETS:
        return MiniMaxConfig.preset(value)
    return MiniMaxConfig.from_pretrained(value)


# ---------------------------------------------------------------------------------------------- info
def add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print layer pattern, parameter counts and memory needs of a config",
                       description="Prints the layer pattern, total/active parameter counts and the memory a "
                                   "checkpoint needs in bf16/int8, without allocating it.")
    p.add_argument("config", metavar="CONFIG_OR_DIR", nargs="?",
                   help="checkpoint directory, path to config.json, or a preset: " + ", ".join(sorted(PRESETS))
                        + "; default: the built-in tiny model")
    add_chat_format_flags(p)
    p.set_defaults(func=cmd_info)


def compress_pattern(pattern: str) -> str:
    """'LLLLLLLS' * 10 -> '(LLLLLLLS)x10'; falls back to the raw pattern when it is not periodic."""
    for period in range(1, len(pattern) + 1):
        if len(pattern) % period == 0 and pattern[:period] * (len(pattern) // period) == pattern:
            reps = len(pattern) // period
            return pattern if reps == 1 else f"({pattern[:period]})x{reps}"
    return pattern  # pragma: no cover - period == len always matches


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB ({format_bytes(n)})"


def info_report(config: MiniMaxConfig) -> str:
    counts = config.param_counts()
    lines = [
        f"layers            {config.num_hidden_layers}: {len(config.linear_layers)} lightning (L), "
        f"{len(config.full_layers)} softmax (S)",
        f"layer pattern     {compress_pattern(config.layer_pattern())}",
        f"dims              hidden {config.hidden_size}, heads {config.num_attention_heads} x {config.head_dim} "
        f"(kv heads {config.num_key_value_heads}), experts {config.num_local_experts} x "
        f"{config.intermediate_size} top-{config.num_experts_per_tok}, vocab {config.vocab_size}",
        f"rope              first {config.rotary_dim} of {config.head_dim} dims, theta {config.rope_theta:g}",
        f"parameters        total {format_count(counts['total'])}, active {format_count(counts['active'])} "
        f"per token (excl. embeddings/lm_head)",
        f"weights bf16      {_gb(config.weight_bytes('bf16'))}",
        f"weights int8      {_gb(config.weight_bytes('int8'))} (weight-only; lm_head, embeddings, "
        f"router and norms kept in bf16)",
        f"kv cache          {format_bytes(config.kv_bytes_per_token(2))}/token bf16, "
        f"{format_bytes(config.kv_bytes_per_token(1))}/token fp8 ({len(config.full_layers)} softmax layers)",
        f"lightning state   {format_bytes(config.lightning_state_bytes_per_seq())}/sequence fp32, "
        f"independent of length",
    ]
    return "\n".join(lines)


def chat_report(args: argparse.Namespace, model_dir: Path) -> str:
    """The family, parsers, template and sampling defaults a checkpoint directory is served with."""
    chat = chat_setup_arg(args, model_dir)
    defaults = ", ".join(f"{k} {v:g}" for k, v in chat.generation_defaults.items()) or "none"
    return "\n".join([
        f"model family      {chat.format.family}",
        f"parsers           tool calls {chat.format.tool_call_parser}, reasoning {chat.format.reasoning_parser}",
        f"chat template     {chat.template_source}",
        f"sampling defaults {defaults} (generation_config.json)",
    ])


def cmd_info(args: argparse.Namespace) -> int:
    target = args.config or str(model_dir_arg(None))
    report = info_report(load_config_arg(target))
    if Path(target).is_dir():  # a checkpoint: it has a chat format too (a preset or config.json alone has not)
        report += "\n" + chat_report(args, Path(target))
    print(report)
    return 0


# ---------------------------------------------------------------------------------------------- plan
def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="memory / communication plan of a multi-GPU deployment (no GPU needed)",
                       description="Estimates what one GPU holds (weights, KV cache, lightning states), how many "
                                   "sequences of the given context fit, the bytes exchanged per token and the decode "
                                   "step time, for a (tp, ep) layout on H200s. Pure arithmetic on the config.")
    p.add_argument("--config", default="text-01", metavar="CONFIG_OR_DIR",
                   help="preset (" + ", ".join(sorted(PRESETS)) + "), checkpoint directory or config.json "
                        "(default %(default)s)")
    p.add_argument("--context", type=parse_tokens, default="1M", metavar="TOKENS",
                   help="tokens per sequence: 4M, 128K (K = 1024, M = 1024^2) or a plain number (default 1M)")
    p.add_argument("--gpus", type=int, default=8, metavar="N", help="number of GPUs (default %(default)s)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "int8", "fp8"), default="bf16",
                   help="weight dtype; int8/fp8 are weight-only (default %(default)s)")
    p.add_argument("--tp", type=int, metavar="N",
                   help="attention tensor-parallel degree; default min(gpus, 8), one node")
    p.add_argument("--ep", type=int, default=1, metavar="N",
                   help="expert groups: experts split N ways, each split gpus/N ways (default %(default)s)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="sequences decoded together, for the step-time estimate (default %(default)s)")
    p.add_argument("--measured", metavar="FILE",
                   help="use the copy bandwidth, all-reduce latency and bus bandwidth measured by "
                        "bench/decode_step.py (its multi-gpu-hardware-*.json) instead of the datasheet numbers, "
                        "and print the measured decode steps beside the model's estimate for them")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from minimax01.parallel.plan import Hardware, measured_comparison, measured_hardware, plan_report

    hw, data = measured_hardware(args.measured) if args.measured else (Hardware(), None)
    print(plan_report(load_config_arg(args.config), args.context, args.gpus, dtype=args.dtype, tp=args.tp,
                      ep=args.ep, batch=args.batch, hw=hw))
    if data is not None:
        print("\n".join(measured_comparison(data, hw)))
    return 0
