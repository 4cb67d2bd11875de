"""Prefix-caching benchmark: time to first token and throughput of the engine with prefix caching on vs off.

Three workloads, all run on one engine with caching on and then on one with caching off (same model, same
inputs), in this process (no HTTP: TTFT is measured from `add_request` to the step that returns the first token):
- multi-turn: a shared system prompt (+ tools) of `--system-tokens`, `--conversations` chats of `--turns` turns;
  each turn appends the previous reply and a new message of ~`--turn-tokens` tokens and is sent when the previous
  turn of its chat has finished (all chats run concurrently);
- many users: `--users` requests of another system prompt (not cached yet) plus a message of their own, sent
  at once: one request computes the prompt, the others wait for its snapshots and restore them.
- one chat at a time: the first `--exact-chats` chats again, one request in flight at a time (the exactness
  check: with nothing else in the batch, replies must be identical with caching on and off).
Replies are greedy with `ignore_eos` (exactly `--max-tokens` tokens). Reported per workload and mode: TTFT
p50/p90 (turn 1 and turns >= 2 apart for the chats), mean TTFT of turns >= 2, throughput, the cache's hit rate
(prompt tokens served from it / prompt tokens) and memory, and whether every reply is identical on vs off.

`--tp N` / `--ep N` run the same workloads on a sharded model (decode_step.with_layout: parallel.world.run_sharded
starts lcm(tp, ep) processes, NCCL on GPUs, gloo on the CPU). This process is rank 0: its engine decides every
cache operation and the other ranks mirror them (docs/prefix_caching.md, "Tensor and expert parallelism"), so
the numbers include the step messages and all-reduces. Each rank draws its own random weights (dummy load), so a
sharded run's replies are not comparable with a single-process run's, only caching on vs off within the run.

    python bench/prefix_cache.py --smoke                                  # tiny model on CPU, a few seconds
    python bench/prefix_cache.py --smoke --tp 2                           # the same on 2 CPU processes (gloo)
    python bench/prefix_cache.py --device cuda --dims real --layers 8     # Text-01 dims, 8 layers, random bf16
    python bench/prefix_cache.py --device cuda --dims real --layers 8 --tp 2 --ep 2   # 2 GPUs
Results: bench/results/<name>-<date>.json and .md (`--out DIR` for another folder).
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, percentile, write_results  # noqa: E402
from decode_step import with_layout  # noqa: E402

from minimax01.causal_lm import MiniMaxForCausalLM  # noqa: E402
from minimax01.cli.args import parse_bytes  # noqa: E402
from minimax01.config import MiniMaxConfig  # noqa: E402
from minimax01.dtypes import DTYPES  # noqa: E402
from minimax01.engine import LLMEngine  # noqa: E402
from minimax01.engine.protocol import StepModel  # noqa: E402
from minimax01.sampling import SamplingParams  # noqa: E402


def save_config(args: argparse.Namespace, directory: str) -> None:
    """config.json of the real dims or the tiny preset's, `--layers` layers: all a dummy load reads."""
    MiniMaxConfig.preset_slice("text-01" if args.dims == "real" else "tiny", args.layers).save_pretrained(directory)


def torch_dtype(args: argparse.Namespace) -> torch.dtype:
    return DTYPES[args.dtype]


def build_model(args: argparse.Namespace) -> MiniMaxForCausalLM:
    """Random weights (`load_format="dummy"`) in this process."""
    with tempfile.TemporaryDirectory() as d:
        save_config(args, d)
        return MiniMaxForCausalLM.from_pretrained(d, dtype=torch_dtype(args), device=args.device,
                                                  load_format="dummy")


class Workload:
    """Fixed inputs (seeded) of both workloads, so that caching on and off see the same tokens."""

    def __init__(self, args: argparse.Namespace, vocab: int) -> None:
        rng = random.Random(args.seed)

        def ids(n: int) -> list[int]:
            return [rng.randrange(vocab) for _ in range(n)]

        def jitter(n: int) -> int:  # ~n tokens, +-10 %
            return max(1, n + rng.randint(-n // 10, n // 10))

        self.system = ids(args.system_tokens)
        self.messages = [[ids(jitter(args.turn_tokens)) for _ in range(args.turns)] for _ in range(args.conversations)]
        # Its own system prompt: the first user computes it while the others wait for its snapshots.
        self.users_system = ids(args.system_tokens)
        self.users = [ids(jitter(args.turn_tokens)) for _ in range(args.users)]


class Timer:
    """Steps an engine, submitting requests when `on_finish` says so; records TTFT, replies and step tokens."""

    def __init__(self, eng: LLMEngine, max_tokens: int) -> None:
        self.eng = eng
        self.params = SamplingParams(temperature=0.0, max_new_tokens=max_tokens, ignore_eos=True)
        self.sent: dict[str, tuple[Any, float, int]] = {}  # id -> (tag, submit time, prompt length)
        self.ttft: dict[Any, float] = {}
        self.replies: dict[Any, list[int]] = {}
        self.prompt_tokens = 0

    def submit(self, tag: Any, prompt: list[int]) -> None:
        rid = self.eng.add_request(prompt, self.params)
        self.sent[rid] = (tag, time.perf_counter(), len(prompt))
        self.replies[tag] = []
        self.prompt_tokens += len(prompt)

    def run(self, on_finish: Any, max_steps: int) -> float:
        """Steps until no request is left (at most `max_steps`); returns the wall time."""
        t0 = time.perf_counter()
        for _ in range(max_steps):
            if not self.eng.has_unfinished():
                break
            outs = self.eng.step()
            now = time.perf_counter()
            for o in outs:
                tag, sent, _ = self.sent[o.request_id]
                if o.new_token_ids and tag not in self.ttft:
                    self.ttft[tag] = now - sent
                self.replies[tag] += o.new_token_ids
                if o.finished:
                    on_finish(tag)
        else:
            raise RuntimeError(f"the workload did not finish in {max_steps} steps")
        return time.perf_counter() - t0


def multi_turn(eng: LLMEngine, w: Workload, args: argparse.Namespace) -> tuple[Timer, float]:
    timer = Timer(eng, args.max_tokens)
    history = [list(w.system) for _ in w.messages]

    def send(c: int, t: int) -> None:
        history[c] += w.messages[c][t]
        timer.submit((c, t), history[c])

    def finished(tag: tuple[int, int]) -> None:
        c, t = tag
        history[c] += timer.replies[tag]
        if t + 1 < args.turns:
            send(c, t + 1)

    for c in range(len(w.messages)):
        send(c, 0)
    return timer, timer.run(finished, max_steps=100_000)


def one_chat_at_a_time(eng: LLMEngine, w: Workload, args: argparse.Namespace) -> tuple[Timer, float]:
    """The first `--exact-chats` chats, one request in flight at a time: every step's batch is then the same with
    caching on and off except for the restored prefix, so replies must be bitwise identical (under concurrency
    the batches differ between the two runs, and bf16 GEMMs round a row differently with the batch shape)."""
    timer = Timer(eng, args.max_tokens)
    wall = 0.0
    for c, messages in enumerate(w.messages[:args.exact_chats]):
        history = list(w.system)
        for t, message in enumerate(messages):
            history += message
            timer.submit((c, t), list(history))
            wall += timer.run(lambda tag: None, max_steps=100_000)
            history += timer.replies[(c, t)]
    return timer, wall


def many_users(eng: LLMEngine, w: Workload, args: argparse.Namespace) -> tuple[Timer, float]:
    timer = Timer(eng, args.max_tokens)
    for u, message in enumerate(w.users):
        timer.submit(u, w.users_system + message)
    return timer, timer.run(lambda tag: None, max_steps=100_000)


def summary(timer: Timer, wall: float, eng: LLMEngine, later: list[Any], first: list[Any]) -> dict[str, Any]:
    ms = 1e3
    later_ttft = [timer.ttft[t] for t in later]
    first_ttft = [timer.ttft[t] for t in first]
    generated = sum(len(r) for r in timer.replies.values())
    stats = eng.stats().prefix_cache
    row: dict[str, Any] = {"requests": len(timer.replies), "wall_s": wall}
    if first_ttft:
        row.update(ttft_first_p50_ms=percentile(first_ttft, 50) * ms, ttft_first_p90_ms=percentile(first_ttft, 90) * ms)
    row |= {
        "ttft_p50_ms": percentile(later_ttft, 50) * ms, "ttft_p90_ms": percentile(later_ttft, 90) * ms,
        "ttft_mean_ms": statistics.fmean(later_ttft) * ms if later_ttft else float("nan"),
        "prompt_tok_per_s": timer.prompt_tokens / wall, "gen_tok_per_s": generated / wall,
        "requests_per_s": len(timer.replies) / wall,
    }
    if stats is not None:
        row.update(hit_rate=stats.hit_tokens / timer.prompt_tokens, snapshots=stats.snapshots,
                   snapshot_mib=stats.snapshot_bytes / 2**20, cached_kv_mib=stats.kv_bytes / 2**20)
    return row


def run_mode(model: StepModel, w: Workload, args: argparse.Namespace, caching: bool
             ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[Any, list[int]]]]:
    """Both workloads on a fresh engine (a warm-up request first: kernel compiles are not timed)."""
    max_len = args.system_tokens + args.turns * (args.turn_tokens * 11 // 10 + args.max_tokens) + 64
    eng = LLMEngine(model, max_num_seqs=args.max_num_seqs, max_model_len=max_len,
                    max_num_batched_tokens=args.max_num_batched_tokens, kv_block_size=args.kv_block_size,
                    prefix_caching=caching, prefix_snapshot_interval=args.interval,
                    prefix_cache_bytes=args.prefix_cache_memory)
    warm = Timer(eng, 2)
    warm.submit("warm-up", list(range(1, 2 * args.kv_block_size + 7)))
    warm.run(lambda tag: None, max_steps=1000)
    rows, replies = {}, {}
    workloads = (("multi-turn", multi_turn), ("many users", many_users), ("one chat at a time", one_chat_at_a_time))
    for name, fn in workloads:
        before = eng.stats().prefix_cache
        timer, wall = fn(eng, w, args)
        if name != "many users":
            later = [t for t in timer.ttft if t[1] >= 1]
            first = [t for t in timer.ttft if t[1] == 0]
        else:
            later, first = list(timer.ttft), []
        row = summary(timer, wall, eng, later, first)
        if before is not None:  # this workload's hits only
            row["hit_rate"] = (eng.stats().prefix_cache.hit_tokens - before.hit_tokens) / timer.prompt_tokens
        rows[name], replies[name] = row, timer.replies
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        rows["multi-turn"]["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del eng, warm, timer  # the timers hold the engine too: free its store before the next mode's
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return rows, replies


Modes = dict[bool, tuple[dict[str, dict[str, Any]], dict[str, dict[Any, list[int]]]]]  # caching -> run_mode(...)


def both_modes(model: StepModel, args: argparse.Namespace) -> Modes:
    """Caching on, then off, over the same model and inputs (a sharded model's world starts once for both)."""
    w = Workload(args, model.config.vocab_size)
    return {caching: run_mode(model, w, args, caching) for caching in (True, False)}


def layout_modes(args: argparse.Namespace) -> Modes | None:
    """both_modes(...) in this process, or for --tp / --ep > 1 with this process as rank 0 of a sharded world;
    None on a follower rank (a world started by torchrun)."""
    if args.tp == args.ep == 1:
        return both_modes(build_model(args), args)
    with tempfile.TemporaryDirectory() as d:  # every rank reads the config from here
        save_config(args, d)
        return with_layout(args.tp, Path(d), lambda model: both_modes(model, args), ep=args.ep,
                           device=args.device, dtype=torch_dtype(args))


def layout_name(args: argparse.Namespace) -> str:
    """"-tp2", "-ep2", "-tp2-ep2"; "" on one process."""
    return "".join(f"-{k}{n}" for k, n in (("tp", args.tp), ("ep", args.ep)) if n > 1)


def layout_meta(args: argparse.Namespace) -> str:
    if max(args.tp, args.ep) == 1:
        return "one process"
    text = (f"tp {args.tp}, ep {args.ep}: {math.lcm(args.tp, args.ep)} processes "
            f"({'NCCL' if args.device == 'cuda' else 'gloo'}); rank 0 runs the engine, the others mirror its steps "
            f"and cache operations")
    # The lock-step wrapper holds the last store until the next engine's replaces it.
    return text + ("; peak_gpu_gib: rank 0's, caching off's includes caching on's KV pool"
                   if args.device == "cuda" else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dims", choices=["tiny", "real"], default="tiny", help="the tiny preset's or Text-01's dims")
    ap.add_argument("--layers", type=int, default=8, help="layers (7 lightning + 1 softmax per 8)")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], help="default bf16 on GPU, fp32 on CPU")
    ap.add_argument("--system-tokens", type=int, default=8192, help="shared system prompt + tools")
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--turn-tokens", type=int, default=300, help="tokens of each new message (+-10 %%)")
    ap.add_argument("--users", type=int, default=32, help="requests of the many-users workload")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens of each reply")
    ap.add_argument("--exact-chats", type=int, default=4, help="chats replayed one request at a time")
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--kv-block-size", type=int, default=64)
    ap.add_argument("--interval", type=int, default=1024, help="--prefix-snapshot-interval")
    ap.add_argument("--prefix-cache-memory", type=parse_bytes, default=parse_bytes("8G"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tp", type=int, default=1, help="attention tensor-parallel degree (processes: lcm(tp, ep))")
    ap.add_argument("--ep", type=int, default=1, help="expert groups")
    ap.add_argument("--smoke", action="store_true",
                    help="a small CPU run (tiny dims, 2 chats x 3 turns, 3 users): checks the script, not speed")
    ap.add_argument("--name", help="results name (default: prefix-cache-<device>[-<layers>layers][-tp<N>][-ep<N>])")
    ap.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.dims, args.layers = "cpu", "tiny", 8
        args.system_tokens, args.conversations, args.turns, args.turn_tokens = 600, 2, 3, 40
        args.users, args.max_tokens, args.max_num_seqs, args.max_num_batched_tokens = 3, 4, 4, 512
        args.exact_chats = 1
        args.kv_block_size, args.interval = 16, 256
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if max(args.tp, args.ep) > 1 and args.device not in ("cpu", "cuda"):
        ap.error("--tp / --ep run rank r on cuda:r (--device cuda) or on the CPU, not on one given device")
    return args


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    modes = layout_modes(args)
    if modes is None:  # a follower rank: rank 0 writes the results
        return []
    (on_rows, on_replies), (off_rows, off_replies) = modes[True], modes[False]
    sections: dict[str, list[dict[str, Any]]] = {}
    for name in on_rows:
        same = sum(on_replies[name][t] == off_replies[name][t] for t in off_replies[name])
        on, off = on_rows[name], off_rows[name]
        sections[name] = [{"caching": "on", **on}, {"caching": "off", **off},
                          {"caching": "off / on", "ttft_mean_ms": off["ttft_mean_ms"] / on["ttft_mean_ms"],
                           "ttft_p50_ms": off["ttft_p50_ms"] / on["ttft_p50_ms"],
                           "wall_s": off["wall_s"] / on["wall_s"],
                           "identical_replies": f"{same}/{len(off_replies[name])}"}]
    sharded = max(args.tp, args.ep) > 1
    meta = {
        "model": f"random {args.dims} dims, {args.layers} layers, {args.dtype}"
                 + (" (each rank draws its shard's weights)" if sharded else ""), "device": args.device,
        "layout": layout_meta(args),
        "workload": f"system {args.system_tokens} tokens; {args.conversations} chats x {args.turns} turns of "
                    f"~{args.turn_tokens} tokens; {args.users} users; replies of {args.max_tokens} tokens (greedy)",
        "engine": f"max_num_seqs {args.max_num_seqs}, max_num_batched_tokens {args.max_num_batched_tokens}, "
                  f"page {args.kv_block_size}, snapshot interval {args.interval}, "
                  f"snapshot memory {args.prefix_cache_memory / 2**30:.1f} GiB",
        "ttft": "add_request -> the step that returns the first token; chats' ttft_p50/p90/mean: turns >= 2",
        "identical_replies": "greedy replies equal with caching on and off; concurrent workloads batch differently "
                             "in the two runs (bf16 GEMMs round a row differently with the batch shape), one chat at "
                             "a time does not: there only the restored prefix differs",
        **environment(),
    }
    name = args.name or (f"prefix-cache-{args.device.split(':')[0]}"
                         + (f"-{args.layers}layers" if args.dims == "real" else "") + layout_name(args))
    paths = write_results(name, sections, meta, results_dir=args.out)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
