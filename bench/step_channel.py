"""Cost of mirroring one step to the follower ranks (parallel.step_channel): gloo broadcast vs the shared-memory
mailbox, side by side in one run. Rank 0 sends `--messages` decode-step messages of batch B back to back
(each send waits until the followers took the previous one), so the time per message is the latency a step pays
before the followers can start it.

    PYTHONPATH=src python bench/step_channel.py [--world 2] [--batches 1 16 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_results  # noqa: E402

import minimax01.parallel.step_channel as step_channel  # noqa: E402
from minimax01.parallel.group import init_distributed  # noqa: E402
from minimax01.parallel.launch import spawn  # noqa: E402


def _step_message(batch: int) -> dict:
    """What LockstepModel sends for a decode step of `batch` sequences (no allocate/free ops)."""
    return {"ops": [], "tokens": list(range(100, 100 + batch)), "slots": list(range(batch)),
            "start_pos": [1000 + i for i in range(batch)], "num_new": [1] * batch}


def _rank(batches: list[int], messages: int, out: Path) -> None:
    init_distributed("gloo", timeout_s=300)
    rows = []
    for kind in ("gloo", "shm"):
        os.environ["MINIMAX01_STEP_CHANNEL"] = kind
        channel = step_channel.open_channel(step_channel.message_group())
        for b in batches:
            msg = _step_message(b)
            times = []
            for _ in range(messages):
                t0 = time.perf_counter()
                if dist.get_rank() == 0:
                    channel.send(msg)
                else:
                    channel.recv()
                times.append(time.perf_counter() - t0)
            dist.barrier()
            rows.append({"channel": kind, "batch": b, "us_per_message": statistics.median(times[10:]) * 1e6})
        channel.close()
    if dist.get_rank() == 0:
        torch.save(rows, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--name", default="step-channel")
    args = ap.parse_args()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"step-channel-{os.getpid()}.pt"
    spawn(_rank, args.world, (args.batches, args.messages, out), start_method="fork")
    rows = torch.load(out)
    gloo = {r["batch"]: r["us_per_message"] for r in rows if r["channel"] == "gloo"}
    for r in rows:
        r["vs_gloo"] = r["us_per_message"] / gloo[r["batch"]]
        print(r)
    meta = {**environment(), "world": args.world, "cpus": os.cpu_count(), "messages": args.messages}
    for p in write_results(args.name, {"per-step message from rank 0 to the followers": rows}, meta):
        print("wrote", p)


if __name__ == "__main__":
    main()
