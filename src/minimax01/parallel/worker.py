"""torchrun entry point: every rank loads its shard and runs the same greedy steps; rank 0 prints the tokens,
the load statistics of every rank and the decode step times.

    torchrun --nproc-per-node 8 -m minimax01.parallel.worker --model DIR --tp 8 --ep 8 \\
        --prompt "Hello" --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.dtypes import DTYPES
from minimax01.parallel.group import init_distributed
from minimax01.parallel.loading import init_parallel_model

@dataclass
class GreedyResult:
    prefill_logits: torch.Tensor  # [B, n, vocab] float32
    tokens: torch.Tensor  # [B, steps] greedy tokens
    step_logits: torch.Tensor  # [B, steps, vocab] logits of each decode step (the one fed token each)
    step_seconds: list[float] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def greedy(model: MiniMaxForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
           steps: int = 4) -> GreedyResult:
    """Prefill through the 2-D call, then `steps` single-token decode calls on its cache, picking argmax."""
    out = model(input_ids, attention_mask=attention_mask)
    prefill = out.logits
    last = prefill[:, -1]  # [B, vocab]; left padding keeps every row's last token in the last column
    tokens, step_logits, seconds = [], [], []
    for _ in range(steps):
        nxt = last.argmax(-1)  # [B]
        tokens.append(nxt)
        _sync(model.device)
        t0 = time.perf_counter()
        out = model(nxt[:, None], cache=out.cache)
        _sync(model.device)
        seconds.append(time.perf_counter() - t0)
        last = out.logits[:, -1]
        step_logits.append(last)
    B, V = prefill.shape[0], prefill.shape[-1]
    return GreedyResult(prefill,
                        torch.stack(tokens, 1) if tokens else torch.zeros(B, 0, dtype=torch.long),
                        torch.stack(step_logits, 1) if step_logits else prefill.new_zeros(B, 0, V), seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimax01.parallel.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--tp", type=int, default=None, help="attention tensor-parallel degree (default: all ranks)")
    p.add_argument("--ep", type=int, default=1, help="expert groups (default 1: experts split by intermediate dim)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--prompt", default="Hello", help="text, encoded with the checkpoint's tokenizer")
    p.add_argument("--input-ids", default=None, help="comma-separated token ids (instead of --prompt)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    init_distributed()
    tp = args.tp or dist.get_world_size()
    model = init_parallel_model(args.model, tp, args.ep, DTYPES[args.dtype], model_cls=MiniMaxForCausalLM)
    load_s = time.perf_counter() - t0
    tokenizer = None
    if args.input_ids is not None:
        ids = [int(t) for t in args.input_ids.split(",") if t.strip()]
    else:
        from minimax01.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.model)
        ids = tokenizer.encode(args.prompt)
    result = greedy(model, torch.tensor([ids]), steps=args.max_new_tokens)
    stats = [None] * dist.get_world_size()
    dist.all_gather_object(stats, (model.load_stats.tensors_read, model.load_stats.bytes_read, load_s))
    if dist.get_rank() == 0:
        layout = model.parallel.layout
        print(f"world={layout.world} tp={layout.tp} ep={layout.ep} (experts split {layout.moe_tp} ways inside a "
              f"group) dtype={args.dtype} device={model.device}")
        for rank, (n, nbytes, secs) in enumerate(stats):
            print(f"rank {rank}: read {n} tensors, {nbytes / 2**30:.3f} GiB in {secs:.1f} s")
        new = result.tokens[0].tolist()
        print("tokens:", new)
        if tokenizer is not None:
            print("text:", repr(tokenizer.decode(new)))
        if result.step_seconds:
            steady = sorted(result.step_seconds)[len(result.step_seconds) // 2]
            print(f"decode step: median {steady * 1e3:.2f} ms over {len(result.step_seconds)} steps (batch 1)")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
