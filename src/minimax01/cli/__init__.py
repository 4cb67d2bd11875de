"""`minimax01` command line. Every subcommand documents its flags in `--help`; errors are one line on
stderr with exit code 2 (bad input), never a traceback for user mistakes.

Commands that take `--model` fall back to the built-in tiny checkpoint (see `minimax01.tiny`), created in the
user cache directory on first use, so `minimax01 generate --prompt "Hello"` works right after installing.

One module per command (group): `reports` (info, plan), `init_tiny`, `generate`, `chat`, `serve`; the flags
they share are in `args`, running the model in `run_model`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from minimax01.cli import chat, generate, init_tiny, reports, serve
from minimax01.cli.args import ArgumentParser
from minimax01.errors import MiniMaxError


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="minimax01",
        description="Run, serve and inspect MiniMax-Text-01 family checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    reports.add_info_parser(sub)
    init_tiny.add_parser(sub)
    generate.add_parser(sub)
    chat.add_parser(sub)
    serve.add_parser(sub)
    reports.add_plan_parser(sub)
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
