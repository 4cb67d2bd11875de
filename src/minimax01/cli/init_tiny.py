"""`minimax01 init-tiny`: a small random checkpoint in the real Hugging Face layout."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-tiny", help="write a small random checkpoint in the real Hugging Face layout",
                       description="Writes config.json, sharded safetensors + index, tokenizer.json (a byte-level "
                                   "BPE trained on Python's own sources), tokenizer_config.json with the real chat "
                                   "template and generation_config.json. For tests and trying things out: the "
                                   "weights are random, so the text is gibberish.")
    p.add_argument("dir", metavar="DIR", help="output directory (created; must be empty if it exists)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default %(default)s)")
    p.add_argument("--layers", type=int, default=16,
                   help="number of layers; every 8th is softmax attention, as in Text-01 (default %(default)s)")
    p.set_defaults(func=cmd_init_tiny)


def cmd_init_tiny(args: argparse.Namespace) -> int:
    from minimax01.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(args.dir, seed=args.seed, layers=args.layers)
    print(f"wrote a random tiny checkpoint to {out}")
    return 0
