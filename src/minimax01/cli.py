"""`minimax01` command line. Every subcommand documents its flags in `--help`; errors are one line on
stderr with exit code 2 (bad input) or 1 (runtime failure), never a traceback for user mistakes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from minimax01.config import PRESETS, MiniMaxConfig, format_bytes, format_count
from minimax01.errors import MiniMaxError


def load_config_arg(value: str) -> MiniMaxConfig:
    """A preset name ('text-01', 'tiny'), a checkpoint directory or a config.json path."""
    if value in PRESETS:
        return MiniMaxConfig.preset(value)
    return MiniMaxConfig.from_pretrained(value)


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


def cmd_info(args: argparse.Namespace) -> int:
    print(info_report(load_config_arg(args.config)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minimax01",
        description="Run, serve and inspect MiniMax-Text-01 family checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("info", help="print layer pattern, parameter counts and memory needs of a config",
                       description="Prints the layer pattern, total/active parameter counts and the memory a "
                                   "checkpoint needs in bf16/int8, without allocating it.")
    p.add_argument("config", metavar="CONFIG_OR_DIR",
                   help="checkpoint directory, path to config.json, or a preset: " + ", ".join(sorted(PRESETS)))
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MiniMaxError as e:
        print(f"minimax01 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
