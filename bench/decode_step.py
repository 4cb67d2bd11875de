"""Whole-model engine steps at Text-01 dimensions on 1 and N GPUs, side by side in one run: random bf16 weights
(`--load-format dummy`: drawn on each GPU, nothing on disk), one full period of 8 layers (7 lightning + 1
softmax) and the real lm_head by default.

Per layout (tp = 1, then each --tp N > 1: N processes through parallel.world.run_sharded, rank 0's engine over
the lock-step wrapper exactly as `minimax01 serve --tp N` runs it) and per batch of 1 / 16 / 64 sequences whose
prompts are already prefilled: the median wall time of one pure decode `LLMEngine.step()` (the layers, the
lm_head, sampling, bookkeeping, the step message to the other ranks and one host sync for the sampled tokens),
eager (unless --no-eager) and with CUDA graphs, split into the model call's GPU span (CUDA events around
rank 0's `step`, all-reduce waits included) and the rest of the engine step (scheduling, inputs, sampling, the
host sync); and prefill tokens/s of one 8 K and one 32 K prompt (8 K-token chunks).

The floor of a decode step is measured in the same run: the bytes one GPU must read for the step (its weights:
attention share, the experts the batch touches, lm_head; the KV cache and lightning states; parallel/plan.py's
model) over the device copy bandwidth measured now, plus, for N > 1, the all-reduces of the step (2 per layer of
[batch, 6144] bf16, 1 per lightning layer of the fp32 norm statistic) at the latency measured for that message
inside a CUDA graph on these GPUs (bench/collectives.py). The measured hardware numbers are written next to the
results (`multi-gpu-hardware-<date>.json`), the input of `minimax01 plan --measured`.

    PYTHONPATH=src python bench/decode_step.py [--tp 2] [--layers 8] [--batches 1 16 64] [--no-eager]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, roofline, write_results  # noqa: E402

from minimax01.config import MiniMaxConfig  # noqa: E402
from minimax01.engine import LLMEngine  # noqa: E402
from minimax01.sampling_params import SamplingParams  # noqa: E402

T = TypeVar("T")


class StepSpan:
    """Wraps the StepModel an engine runs and records, per call of `step`, the GPU time between the call's start
    and end (CUDA events on the current stream: the model's kernels or graph replay, including any wait for the
    other ranks inside its all-reduces) and the host time the call takes to return (launches, no sync). The rest
    of an engine step (scheduling, the step's inputs, sampling, the host sync for the sampled tokens) is the
    step's wall time minus the GPU span."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[torch.cuda.Event, torch.cuda.Event, float]] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def step(self, tokens, batch, store, logits_index=None):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        logits = self.inner.step(tokens, batch, store, logits_index)
        end.record()
        self.calls.append((start, end, time.perf_counter() - t0))
        return logits

    def last(self) -> tuple[float, float]:
        """(GPU span, host time of the call) of the last step, in seconds (after a synchronize)."""
        start, end, host = self.calls[-1]
        return start.elapsed_time(end) / 1e3, host


def engine_with_requests(model, batch: int, prompt_len: int, max_new_tokens: int, graphs: bool | None = None
                         ) -> tuple[LLMEngine, list[str]]:
    """An engine over `model` holding `batch` greedy requests of random `prompt_len`-token prompts (seeded by the
    batch size), each generating `max_new_tokens` (EOS ignored); returns it and the request ids."""
    engine = LLMEngine(model, max_num_seqs=batch, max_model_len=prompt_len + max_new_tokens + 6,
                       max_num_batched_tokens=max(prompt_len, 512), cuda_graphs=graphs)
    gen = torch.Generator().manual_seed(batch)
    ids = [engine.add_request(torch.randint(0, model.config.vocab_size, (prompt_len,), generator=gen).tolist(),
                              SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, ignore_eos=True))
           for _ in range(batch)]
    return engine, ids


def decode_run(model, batch: int, prompt_len: int, steps: int, graphs: bool | None
               ) -> tuple[list[float], list, int, list[tuple[float, float]]]:
    """Step times (s) of `steps` pure decode steps of `batch` sequences, the tokens each generated, how many
    steps a CUDA graph replayed (the runner is the engine's own on one GPU, under the lock-step wrapper on N),
    and each timed step's (GPU span, host time) of the model call (StepSpan)."""
    # the first admitted sequences decode while later prompts prefill: + batch
    engine, ids = engine_with_requests(model, batch, prompt_len, steps + batch + 2, graphs)
    span = engine.model = StepSpan(engine.model)
    spans = []
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
            spans.append(span.last())
        for o in outs:
            tokens[o.request_id] += o.new_token_ids
    runner = engine.graphs if engine.graphs is not None else getattr(model, "inner", None)
    return times[2:], [tokens[i] for i in ids], getattr(runner, "num_replays", 0), spans[2:]


def prefill_run(model, prompt_len: int, chunk: int) -> float:
    """Seconds to prefill one prompt of `prompt_len` tokens (chunks of `chunk`) and sample its first token."""
    engine = LLMEngine(model, max_num_seqs=1, max_model_len=prompt_len + 8, max_num_batched_tokens=chunk)
    prompt = torch.randint(0, model.config.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(1))
    engine.add_request(prompt.tolist(), SamplingParams(temperature=0.0, max_new_tokens=1, ignore_eos=True))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(model, args: argparse.Namespace, graphs: bool) -> dict:
    """Decode rows of every batch (and, with graphs, the prefill rows) for one model and one graph mode."""
    out: dict = {"decode": {}, "prefill": {}, "tokens": {}, "gpu_span": {}, "host_call": {}}
    lockstep = getattr(model, "inner", None) is not None  # graphs are chosen below the wrapper, per rank
    replayed = 0
    for b in args.batches:
        times, out["tokens"][b], n, spans = decode_run(model, b, args.prompt_len, args.steps,
                                                       None if lockstep else graphs)
        out["decode"][b] = statistics.median(times)
        out["gpu_span"][b] = statistics.median(g for g, _ in spans)
        out["host_call"][b] = statistics.median(h for _, h in spans)
        print(f"  batch {b}: median decode step {out['decode'][b] * 1e3:.2f} ms, model call's GPU span "
              f"{out['gpu_span'][b] * 1e3:.2f} ms", file=sys.stderr, flush=True)
        replayed = n if lockstep else replayed + n  # the wrapper's runner counts over all batches
    out["replayed"] = replayed
    if graphs:
        prefill_run(model, args.chunk, args.chunk)  # compiles the prefill kernels for this chunk shape
        for n in args.prefill:
            out["prefill"][n] = prefill_run(model, n, args.chunk)
            print(f"  prefill {n}: {out['prefill'][n]:.3f} s", file=sys.stderr, flush=True)
    return out


def run_mode(tp: int, graphs: bool, config_dir: Path, args: argparse.Namespace) -> dict:
    """measure(...) for one layout and one graph mode, in this process; tp > 1 runs in tp processes (one per GPU:
    this one is rank 0)."""
    os.environ["MINIMAX01_CUDA_GRAPHS"] = "1" if graphs else "0"
    return with_layout(tp, config_dir, lambda model: measure(model, args, graphs))


def with_layout(tp: int, config_dir: Path, leader: Callable[[Any], T], ep: int = 1, device: str = "cuda",
                dtype: torch.dtype = torch.bfloat16) -> T | None:
    """`leader(model)` over random weights of `config_dir` (`dtype`) in the layout (tp, ep): the model itself in
    this process when both are 1; otherwise rank 0's lock-step wrapper while this process leads lcm(tp, ep)
    processes (parallel.world.run_sharded: one per GPU with NCCL for device "cuda", gloo processes for "cpu").
    None on the other ranks of a world started by torchrun, which follow instead of leading."""
    if tp == ep == 1:
        from minimax01.weights import load_pretrained

        return leader(load_pretrained(config_dir, dtype, device, progress=False, load_format="dummy"))
    from minimax01.parallel.world import WorldSpec, run_sharded

    spec = WorldSpec(str(config_dir), tp=tp, ep=ep, dtype=dtype, device=device, load_format="dummy")
    return run_sharded(spec, leader)


def run_layout(tp: int, config_dir: Path, args: argparse.Namespace) -> dict[bool, dict]:
    """{graphs: measure(...)} for one layout. Each mode runs in a fresh process (this script with --only): a
    process group is created once per process and no CUDA state carries over from one mode to the next."""
    import subprocess

    results = {}
    for graphs in ((False, True) if args.eager else (True,)):
        print(f"[{time.strftime('%H:%M:%S')}] {tp} GPU(s), graphs {'on' if graphs else 'off'}", file=sys.stderr,
              flush=True)
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "mode.pt"
            cmd = [sys.executable, __file__, "--only", str(tp), str(int(graphs)), str(config_dir), str(out),
                   "--batches", *map(str, args.batches), "--prompt-len", str(args.prompt_len),
                   "--steps", str(args.steps), "--prefill", *map(str, args.prefill), "--chunk", str(args.chunk)]
            subprocess.run(cmd, check=True, timeout=args.mode_timeout)
            results[graphs] = torch.load(out)
    return results


def measure_collectives(world: int, timeout_s: float = 180.0) -> dict | None:
    """bench/collectives.py's numbers, in a process of its own with a time limit: a stuck collective must not
    take the whole benchmark with it (None, and the floors then leave the all-reduces out)."""
    import subprocess

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "collectives.pt"
        try:
            subprocess.run([sys.executable, str(Path(__file__).parent / "collectives.py"), "--world", str(world),
                            "--save", str(out)], timeout=timeout_s, check=True)
            return torch.load(out)
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
            print(f"all-reduce measurement failed ({e}); floors without communication", file=sys.stderr)
            return None


def floor_ms(config, tp: int, batch: int, context: int, copy_Bps: float, latency_us: dict) -> float:
    """Bytes one GPU reads for a decode step / copy bandwidth + the step's all-reduces at measured latency."""
    from minimax01.parallel.plan import Hardware, make_plan

    plan = make_plan(config, context, gpus=tp, tp=tp, batch=batch, hw=Hardware(hbm_Bps=copy_Bps))
    comm = 0.0
    if tp > 1:
        n_lin = len(config.linear_layers)
        comm = (2 * config.num_hidden_layers * latency_us.get(("hidden states", batch), 0.0)
                + n_lin * latency_us.get(("norm statistic", batch), 0.0)) / 1e3
    return plan.step_time["HBM reads"] * 1e3 + comm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tp", type=int, nargs="+", default=[2], help="tensor-parallel degrees to compare with 1 GPU")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--prefill", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--name", default="decode-step")
    ap.add_argument("--no-eager", dest="eager", action="store_false", help="graph mode only (no eager rows)")
    ap.add_argument("--mode-timeout", type=float, default=600, help="seconds for one layout and graph mode")
    ap.add_argument("--only", nargs=4, metavar=("TP", "GRAPHS", "CONFIG_DIR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:  # internal: one mode in this fresh process (run_layout)
        tp, graphs, config_dir, out = args.only
        torch.save(run_mode(int(tp), graphs == "1", Path(config_dir), args), out)
        return
    t0 = time.time()
    config = MiniMaxConfig.preset_slice("text-01", args.layers)
    config_dir = Path(tempfile.mkdtemp(prefix="minimax01-bench-"))
    config.save_pretrained(config_dir)
    roof = roofline()  # before any model: the GPU to itself
    copy_Bps = roof["copy_gbps"] * 1e9
    latency_us, coll = {}, None
    if max(args.tp) > 1:
        coll = measure_collectives(max(args.tp))
        if coll:
            latency_us = {(r["message"], r["tokens"]): r["in_graph_us"] for r in coll["rows"]}
    layouts = {1: run_layout(1, config_dir, args)}
    for tp in args.tp:
        if tp > 1:
            layouts[tp] = run_layout(tp, config_dir, args)
    decode_rows, prefill_rows = [], []
    for tp, res in layouts.items():
        for b in args.batches:
            graph = res[True]["decode"][b] * 1e3
            fl = floor_ms(config, tp, b, args.prompt_len, copy_Bps, latency_us)
            gpu_span = res[True]["gpu_span"][b] * 1e3
            row = {"gpus": tp, "batch": b, "graph_step_ms": graph,
                   "graph_tok_s": b / graph * 1e3, "floor_ms": fl, "graph_vs_floor": graph / fl,
                   # where a graph step's time goes: the model call's GPU span, the rest of the engine step
                   "graph_model_gpu_ms": gpu_span, "graph_model_call_host_ms": res[True]["host_call"][b] * 1e3,
                   "graph_outside_model_ms": graph - gpu_span,
                   "graphs_replayed": res[True]["replayed"],
                   }
            if False in res:  # graph vs eager: the step time and the requests whose greedy tokens are identical
                row["eager_step_ms"] = res[False]["decode"][b] * 1e3
                row["same_greedy_tokens"] = sum(x == y for x, y in zip(res[False]["tokens"][b], res[True]["tokens"][b]))
            if tp > 1:
                row["speedup_vs_1gpu"] = layouts[1][True]["decode"][b] / res[True]["decode"][b]
            decode_rows.append(row)
            print(row, flush=True)
        for n, secs in res[True]["prefill"].items():
            row = {"gpus": tp, "prompt": n, "prefill_s": secs, "tok_s": n / secs}
            if tp > 1:
                row["speedup_vs_1gpu"] = layouts[1][True]["prefill"][n] / secs
            prefill_rows.append(row)
            print(row, flush=True)
    meta = {**environment(), "model": f"random text-01 dims, {args.layers} layers "
                                      f"({config.attn_type_list.count(0)} lightning), bf16, real lm_head",
            "context": args.prompt_len, **roof, "gpus_visible": torch.cuda.device_count(),
            "wall_s": round(time.time() - t0, 1)}
    sections = {"decode step (engine, median ms)": decode_rows, "prefill (one prompt, 8K-token chunks)": prefill_rows}
    if coll:
        sections["NCCL all-reduce (us)"] = coll["rows"]
        meta["allreduce_bus_GBps"] = round(coll["bus_bandwidth_Bps"] / 1e9, 1)
    for p in write_results(args.name, sections, meta):
        print("wrote", p)
    if coll:  # the input of `minimax01 plan --measured`
        hw = {"copy_Bps": copy_Bps, "allreduce_bus_Bps": coll["bus_bandwidth_Bps"], "gpus": max(args.tp),
              "allreduce_us": {f"{m} x{t}": us for (m, t), us in latency_us.items()},
              "decode_step_ms": {f"tp{r['gpus']} batch{r['batch']}": r["graph_step_ms"] for r in decode_rows},
              "context": args.prompt_len, "layers": args.layers, "gpu": environment().get("gpu", "")}
        stamp = time.strftime("%Y-%m-%d", time.gmtime())
        for d in [RESULTS] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else []):
            (d / f"multi-gpu-hardware-{stamp}.json").write_text(json.dumps(hw, indent=1) + "\n")


if __name__ == "__main__":
    main()
