"""Running the model for `generate` and `chat`: loading it from the model flags, streaming one reply's text to
stdout, and the finish reason + speed line on stderr."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from minimax01.cli.args import device_arg, model_dir_arg, use_free_cores

if TYPE_CHECKING:
    from minimax01.loading import Loaded


RANDOM_WEIGHTS_NOTE = ("[the built-in tiny model has random weights: its text is random tokens; pass --model DIR "
                      "for a real checkpoint]")


def with_model(args: argparse.Namespace, body: Callable[[Loaded], int]) -> int:
    """`body(loaded)` over the model of the --model/--dtype/--device/--quantize/--tp/--ep/--load-format flags.
    With --tp or --ep > 1 (or under torchrun) the model is sharded over several processes (see
    loading.run_with_model) and a follower rank returns 0. The load time goes to stderr."""
    from minimax01.loading import run_with_model

    device = device_arg(args.device)
    use_free_cores(device)
    model = None if args.model is None else model_dir_arg(args.model)  # None: the built-in tiny checkpoint
    if model is None:
        print(RANDOM_WEIGHTS_NOTE, file=sys.stderr)
    start = time.perf_counter()

    def timed(loaded: Loaded) -> int:
        print(f"[loaded in {time.perf_counter() - start:.1f} s]", file=sys.stderr)
        return body(loaded)

    result = run_with_model(model, timed, dtype=args.dtype, device=device, quantize=args.quantize, tp=args.tp,
                            ep=args.ep, load_format=args.load_format, check_weights=not args.skip_weight_check)
    return 0 if result is None else result


class Stats:
    """Times the tokens of one request; reports the finish reason, the time to the first token and the steady
    decode rate on stderr. The first token's time includes the engine's start (CUDA-graph capture) and the first
    use of each kernel (Triton compiles it), so it is kept apart from the decode rate, which counts only the
    tokens after the first one."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None  # when the first token arrived
        self.last = self.start
        self.tokens = 0
        self.finish_reason: str | None = None

    def see(self, event: Any) -> None:
        if event.token_id is not None:
            self.tokens += 1
            self.last = time.perf_counter()
            if self.first is None:
                self.first = self.last
        if event.finished:
            self.finish_reason = event.finish_reason

    def report(self) -> None:
        total = time.perf_counter() - self.start
        parts = [f"finish_reason={self.finish_reason}", f"{self.tokens} tokens", f"{total:.2f} s"]
        if self.first is not None:
            parts.append(f"first token after {self.first - self.start:.2f} s (engine start and kernel "
                         f"compilation included)")
        if self.tokens > 1 and self.last > self.first:
            rate = (self.tokens - 1) / (self.last - self.first)
            parts.append(f"decode {rate:.1f} tokens/s")
        print("[" + ", ".join(parts) + "]", file=sys.stderr)


def stream_text(loaded: Loaded, prompt: str, sampling: dict[str, Any], stats: Stats) -> Iterable[str]:
    """Generated text deltas of one prompt; `stats` counts the tokens."""
    from minimax01.generation import generate

    events = generate(loaded.model, prompts=[prompt], tokenizer=loaded.tokenizer, stream=True,
                      stop_token_ids=loaded.stop_token_ids, **sampling)
    for event in events:
        stats.see(event)
        if event.text:
            yield event.text


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()  # stream: show each piece as soon as it is generated
