"""`minimax01 generate`: the completion of one prompt, streamed to stdout."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from minimax01.cli.args import (add_chat_format_flags, add_model_flags, add_sampling_flags, chat_setup_arg,
                                model_dir_arg, sampling_kwargs)
from minimax01.cli.run_model import Stats, stream_text, with_model, write
from minimax01.chat.template import render_chat
from minimax01.errors import RequestError

if TYPE_CHECKING:
    from minimax01.loading import Loaded


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="complete a prompt, streaming the text to stdout",
                       description="Streams the completion of one prompt to stdout; the finish reason and the "
                                   "speed go to stderr.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="the prompt text")
    src.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE ('-' = stdin)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as one user message with the model's chat template")
    add_model_flags(p)
    add_sampling_flags(p)
    add_chat_format_flags(p)
    p.set_defaults(func=cmd_generate)


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt text; empty is refused here, before the model loads (the engine would refuse it after)."""
    if args.prompt is not None:
        text, source = args.prompt, "--prompt"
    elif args.prompt_file == "-":
        text, source = sys.stdin.read(), "--prompt-file - (stdin)"
    else:
        try:
            text, source = Path(args.prompt_file).read_text(encoding="utf-8"), f"--prompt-file {args.prompt_file}"
        except (OSError, UnicodeDecodeError) as e:
            raise RequestError(f"--prompt-file {args.prompt_file}: cannot read ({e.__class__.__name__}: {e})") \
                from None
    if not text and not args.chat:  # with --chat the template wraps even an empty message
        raise RequestError(f"{source}: the prompt is empty")
    return text


def cmd_generate(args: argparse.Namespace) -> int:
    chat = chat_setup_arg(args, model_dir_arg(args.model))  # before the model: a bad flag fails fast
    sampling = sampling_kwargs(args, chat.generation_defaults)
    # Before the (slow) model, so that a bad file fails fast; under torchrun on rank 0 alone (it may be stdin).
    prompt = read_prompt(args) if os.environ.get("RANK", "0") == "0" else ""

    def run(loaded: Loaded) -> int:
        text = (render_chat([{"role": "user", "content": prompt}], chat_template=chat.chat_template)
                if args.chat else prompt)
        stats = Stats()
        for piece in stream_text(loaded, text, sampling, stats):
            write(piece)
        write("\n")
        stats.report()  # after the newline, so that on a terminal it gets a line of its own
        return 0

    return with_model(args, run)
