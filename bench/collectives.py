"""NCCL all-reduce on this machine's GPUs, as the sharded model uses it: latency of the decode-sized messages
([tokens, 6144] bf16 for tokens = 1 / 16 / 64, and the lightning norm's [tokens] fp32 statistic), eager and
back to back inside a CUDA graph (as the graph runner replays them), and the bus bandwidth of a large message.
`measure(world)` is what bench/decode_step.py --tp records next to its rows (the floor of a TP step uses it);
on its own:

    PYTHONPATH=src python bench/collectives.py [--world 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_results  # noqa: E402

from minimax01.parallel.group import init_distributed  # noqa: E402
from minimax01.parallel.launch import spawn  # noqa: E402

HIDDEN = 6144
TOKENS = (1, 16, 64)
IN_GRAPH = 50  # all-reduces captured back to back in one graph


def _events_ms(fn, reps: int) -> float:  # noqa: ANN001
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        dist.barrier()
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _rank(out: Path) -> None:
    init_distributed("nccl")
    log = (lambda msg: print(f"[collectives rank 0] {msg}", file=sys.stderr, flush=True)) if dist.get_rank() == 0 \
        else (lambda msg: None)
    log("joined")
    rows = []
    for tokens in TOKENS:
        for shape, dtype, what in (((tokens, HIDDEN), torch.bfloat16, "hidden states"),
                                   ((tokens,), torch.float32, "norm statistic")):
            x = torch.randn(shape, dtype=dtype, device="cuda")
            for _ in range(20):
                dist.all_reduce(x)
            eager_us = _events_ms(lambda: dist.all_reduce(x), 200) * 1e3  # noqa: B023
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                dist.all_reduce(x)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(IN_GRAPH):
                    dist.all_reduce(x)
            graph.replay()
            graph_us = _events_ms(graph.replay, 30) * 1e3 / IN_GRAPH
            log(f"{what} x{tokens}: eager {eager_us:.1f} us, in graph {graph_us:.1f} us")
            rows.append({"message": what, "tokens": tokens, "bytes": x.numel() * x.element_size(),
                         "eager_us": eager_us, "in_graph_us": graph_us})
    big = torch.randn(64 * 2**20, dtype=torch.bfloat16, device="cuda")  # 128 MiB
    n = dist.get_world_size()
    ms = _events_ms(lambda: dist.all_reduce(big), 20)
    bus = 2 * (n - 1) / n * big.numel() * 2 / (ms / 1e3)
    if dist.get_rank() == 0:
        torch.save({"rows": rows, "bus_bandwidth_Bps": bus, "world": n}, out)


def measure(world: int) -> dict:
    """{'rows': per message size eager / in-graph microseconds, 'bus_bandwidth_Bps', 'world'} on `world` GPUs."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "collectives.pt"
        spawn(_rank, world, (out,))
        return torch.load(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--save", metavar="FILE", help="only write the measurement to FILE (torch.save), no results")
    args = ap.parse_args()
    res = measure(args.world)
    if args.save:
        torch.save(res, args.save)
        return
    for r in res["rows"]:
        print(r)
    print(f"bus bandwidth {res['bus_bandwidth_Bps'] / 1e9:.0f} GB/s")
    meta = {**environment(), "world": args.world, "bus_bandwidth_GBps": round(res["bus_bandwidth_Bps"] / 1e9, 1),
            "nccl_nvls": os.environ.get("NCCL_NVLS_ENABLE", "unset")}
    for p in write_results("collectives", {"NCCL all-reduce": res["rows"]}, meta):
        print("wrote", p)


if __name__ == "__main__":
    main()
