"""Argument parsing shared by the commands: one-line parser errors, size arguments ('8G', '4M'), the model
flags (--model/--dtype/--device/--quantize/--tp/--ep/--load-format) and the sampling flags, each with its interpretation."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, NoReturn

from minimax01.errors import RequestError

DTYPES = ("bf16", "fp32")
QUANTIZE = ("int8",)
_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: 'minimax01 generate: error: ...' (exit 2), no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ---------------------------------------------------------------------------------------------- sizes
def parse_tokens(value: str) -> int:
    """'4M' -> 4194304, '128K' -> 131072, '1000000' -> 1000000 (binary suffixes, as context sizes are quoted)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)", value.strip().upper())
    if m is None or float(m.group(1)) * _SUFFIXES[m.group(2)] < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a token count (e.g. 4M, 128K, 1000000)")
    return int(float(m.group(1)) * _SUFFIXES[m.group(2)])


def parse_bytes(value: str) -> int:
    """'8G' -> 8 GiB, '512M', '1000' (binary suffixes)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)I?B?", value.strip().upper())
    if m is None or float(m.group(1)) * _SUFFIXES[m.group(2)] < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a byte count (e.g. 8G, 512M, 1000000)")
    return int(float(m.group(1)) * _SUFFIXES[m.group(2)])


# ---------------------------------------------------------------------------------------------- model flags
def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR",
                   help="checkpoint directory (Hugging Face layout); default: the built-in tiny random model, "
                        "created in the user cache directory on first use ($MINIMAX01_CACHE_DIR overrides it)")
    p.add_argument("--dtype", choices=DTYPES, help="weight/activation dtype; default bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", help="cpu, cuda or cuda:N; default cuda when available, else cpu")
    p.add_argument("--quantize", choices=QUANTIZE,
                   help="weight-only quantization while loading, tensor by tensor (int8: per-channel weights; "
                        "default: none)")
    p.add_argument("--tp", type=int, default=1, metavar="N",
                   help="tensor parallelism: attention heads split N ways. With --tp or --ep > 1 the command starts "
                        "lcm(tp, ep) processes itself (one per GPU, rank r on cuda:r; gloo processes with --device "
                        "cpu); under torchrun it joins torchrun's world instead (default %(default)s)")
    p.add_argument("--ep", type=int, default=1, metavar="N",
                   help="expert parallelism: experts split into N groups, each expert's intermediate dim split "
                        "among the processes of its group (default %(default)s)")
    p.add_argument("--load-format", choices=("auto", "dummy"), default="auto",
                   help="auto: read the checkpoint's weights; dummy: read only its config.json and draw random "
                        "weights on the device (benchmarks at real dimensions without the weights on disk) "
                        "(default %(default)s)")
    p.add_argument("--skip-weight-check", action="store_true",
                   help="do not check every weight for NaN / inf while loading (the check's cost is printed "
                        "with the load time; a corrupt weight otherwise turns every completion into garbage)")


def model_dir_arg(value: str | None) -> Path:
    """`--model DIR`, checked to exist; the built-in tiny checkpoint when omitted."""
    if value is None:
        from minimax01.tiny import ensure_default_model

        return ensure_default_model()
    path = Path(value)
    if path.is_file():
        raise RequestError(f"--model {value}: is a file; pass the checkpoint directory that holds it "
                           f"(--model {path.parent})")
    if not path.is_dir():
        raise RequestError(f"--model {value}: no such checkpoint directory")
    if not (path / "config.json").is_file():
        raise RequestError(f"--model {value}: not a checkpoint directory (no config.json in it)")
    return path


def free_cores() -> int | None:
    """Intra-op threads for a CPU run when OMP_NUM_THREADS does not say: the cores this process may use minus
    the busy ones (1-minute load average), at least 1; None when OMP_NUM_THREADS is set. torch's default, one
    thread per core, makes every op wait for the slowest thread: on a shared 2-core machine the tiny model fell
    from 18 to 0.8 tokens/s."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - busy)))


def use_free_cores(device: str) -> None:
    """Sets torch's thread count to `free_cores()` for a CPU run (a no-op on GPU or with OMP_NUM_THREADS)."""
    threads = free_cores() if device == "cpu" else None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def device_arg(value: str | None) -> str:
    """'cpu', 'cuda' or 'cuda:N'; default: cuda when available."""
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise RequestError(f"--device {value!r}: unknown device (expected cpu, cuda or cuda:N)")
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise RequestError(f"--device {value}: CUDA is not available on this machine")
    return value


# ---------------------------------------------------------------------------------------------- chat format flags
def add_chat_format_flags(p: argparse.ArgumentParser) -> None:
    from minimax01.chat.tool_parsers import REASONING_PARSERS, TOOL_CALL_PARSERS

    g = p.add_argument_group("chat format (default: detected from the checkpoint)")
    g.add_argument("--chat-template", metavar="FILE",
                   help="Jinja chat template to use instead of the checkpoint's (default: tokenizer_config.json "
                        "chat_template or chat_template.jinja; the built-in Text-01 one when it has none)")
    g.add_argument("--tool-call-parser", choices=tuple(TOOL_CALL_PARSERS),
                   help="tool-call output format: minimax-text-01 <function_call>, minimax-m1 <tool_calls> "
                        "(default: the checkpoint's model family)")
    g.add_argument("--reasoning-parser", choices=tuple(REASONING_PARSERS),
                   help="minimax-m1: <think>...</think> text becomes reasoning_content; none: all is content "
                        "(default: the checkpoint's model family)")


def chat_setup_arg(args: argparse.Namespace, model_dir: Path) -> Any:
    """loading.ChatSetup of the checkpoint and the chat format flags."""
    from minimax01.loading import load_chat_setup

    return load_chat_setup(model_dir, args.chat_template, args.tool_call_parser, args.reasoning_parser)


# ---------------------------------------------------------------------------------------------- sampling flags
def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="most tokens to generate per reply (>= 1; default %(default)s)")
    # temperature / top-k / top-p default to the checkpoint's generation_config.json, else 1.0 / 0 / 1.0.
    g.add_argument("--temperature", type=float, metavar="T",
                   help="softmax temperature in [0, 2]; 0 = greedy (default: the checkpoint's, else 1.0)")
    g.add_argument("--top-k", type=int, metavar="K",
                   help="sample from the K most likely tokens; 0 or -1 disables (default: the checkpoint's, else 0)")
    g.add_argument("--top-p", type=float, metavar="P",
                   help="nucleus sampling: smallest set with probability mass >= P, in (0, 1] (default: the "
                        "checkpoint's, else 1.0)")
    g.add_argument("--min-p", type=float, default=0.0, metavar="P",
                   help="drop tokens less likely than P x the most likely one, in [0, 1] (default %(default)s)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="> 1 discourages tokens already in prompt or output; 1 disables (default %(default)s)")
    g.add_argument("--seed", type=int, metavar="S", help="random seed, for reproducible sampling")
    g.add_argument("--stop", nargs="+", action="extend", metavar="STR",
                   help="stop strings: the output ends just before the first one (repeatable)")


def sampling_kwargs(args: argparse.Namespace, defaults: dict[str, float] | None = None) -> dict[str, Any]:
    """The sampling flags as generate() keyword arguments, validated by SamplingParams (message names the flag).
    `defaults`: the checkpoint's generation_config.json values, for the flags not given."""
    from minimax01.sampling_params import SamplingParams

    defaults = defaults or {}

    def pick(key: str, fallback: float) -> Any:
        value = getattr(args, key)
        return value if value is not None else defaults.get(key, fallback)

    knobs = {"temperature": pick("temperature", 1.0), "top_k": int(pick("top_k", 0)), "top_p": pick("top_p", 1.0),
             "min_p": args.min_p}
    common = {"max_new_tokens": args.max_new_tokens, "repetition_penalty": args.repetition_penalty,
              "seed": args.seed, "stop": args.stop or []}
    params = SamplingParams(**knobs, **common)
    try:
        params.validate()
    except RequestError as e:
        field = str(e).split(" ", 1)[0]
        raise RequestError("--" + field.replace("_", "-") + str(e)[len(field):]) from None
    # generate() samples only with do_sample=True; temperature 0 (or top-k 1) is its greedy path.
    return {**common, "do_sample": True, **knobs} if not params.is_greedy else {**common, "do_sample": False}
