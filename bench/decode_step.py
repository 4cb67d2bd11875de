"""Whole-model decode steps through the engine, eager against CUDA graphs, side by side in one process
(issue 9, item 5): random weights at Text-01 dims with a few layers (3 lightning + 1 softmax by default),
batches of 1 / 16 / 64 sequences whose prompts are already prefilled, greedy decoding.

Per batch size it reports the median wall time of one `LLMEngine.step()` (a pure decode step: embedding, the
layers, the lm_head — 2.46 GB of bf16 weights, 0.82 ms at 3 TB/s —, sampling, bookkeeping and one host sync
for the sampled tokens), tokens/s, and whether both modes
generated the same greedy tokens (bf16: a different split count in paged attention may flip a near-tie, so a
mismatch is reported, not asserted).

    PYTHONPATH=src python bench/decode_step.py [--layers 4] [--batches 1 16 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, real_dims_model, write_results  # noqa: E402

from minimax01.engine import LLMEngine  # noqa: E402
from minimax01.sampling import SamplingParams  # noqa: E402


def decode_run(model, batch: int, prompt_len: int, steps: int, graphs: bool) -> tuple[list[float], list[list[int]]]:
    """Step times (s) of `steps` pure decode steps of `batch` sequences, and the tokens each generated."""
    engine = LLMEngine(model, max_num_seqs=batch, max_model_len=prompt_len + steps + batch + 8,
                       max_num_batched_tokens=max(prompt_len, 512), cuda_graphs=graphs)
    gen = torch.Generator().manual_seed(batch)
    ids = [engine.add_request(torch.randint(0, model.config.vocab_size, (prompt_len,), generator=gen).tolist(),
                              # the first admitted sequences decode while later prompts prefill: + batch
                              SamplingParams(temperature=0.0, max_new_tokens=steps + batch + 2, ignore_eos=True))
           for _ in range(batch)]
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    times = []
    while engine.has_unfinished():
        decoding = all(len(t) >= 1 for t in tokens.values())  # every prompt done: this step only decodes
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = engine.step()
        torch.cuda.synchronize()
        if decoding and len(outs) == batch:
            times.append(time.perf_counter() - t0)
        for o in outs:
            tokens[o.request_id] += o.new_token_ids
    if graphs:
        assert engine.graphs is not None and engine.graphs.graphs, "no CUDA graph was captured"
    return times[2:], [tokens[i] for i in ids]  # the first decode steps capture the graphs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    t0 = time.time()
    dev = torch.device("cuda")
    model = real_dims_model("text-01", args.layers, dev)
    rows = []
    for b in args.batches:
        row: dict = dict(batch=b, layers=args.layers, context=args.prompt_len)
        toks = {}
        for graphs in (False, True):
            times, toks[graphs] = decode_run(model, b, args.prompt_len, args.steps, graphs)
            ms = statistics.median(times) * 1e3
            key = "graph" if graphs else "eager"
            row[f"{key}_step_ms"] = ms
            row[f"{key}_tok_s"] = b / ms * 1e3
        row["speedup"] = row["eager_step_ms"] / row["graph_step_ms"]
        same = sum(x == y for x, y in zip(toks[False], toks[True]))
        row["same_greedy_tokens"] = f"{same}/{b} sequences"
        rows.append(row)
        print(row, flush=True)
    meta = {**environment(), "model": f"random text-01 dims, {args.layers} layers "
                                      f"({model.config.attn_type_list.count(0)} lightning), bf16",
            "wall_s": round(time.time() - t0, 1)}
    for p in write_results("decode-step", {"engine decode step, eager vs CUDA graphs": rows}, meta):
        print("wrote", p)


if __name__ == "__main__":
    main()
