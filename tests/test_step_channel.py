"""The step channel of sharded serving (parallel.step_channel): rank 0's messages reach every follower in order,
whole (also when larger than one shared-memory chunk), over both transports; a follower stops waiting when rank 0
is gone instead of hanging."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import minimax01.parallel.step_channel as step_channel
from minimax01.parallel.group import init_distributed
from minimax01.parallel.launch import spawn


def _messages() -> list[object]:
    big = list(range(3 * step_channel._CAPACITY // 8))  # pickles to several chunks
    return [{"step": 1, "tokens": [5, 6, 7]}, None, "x" * 1000, big, {"step": 2, "tokens": []}]


def _rank(kind: str, out_dir: Path) -> None:
    init_distributed("gloo", timeout_s=120)
    os.environ["MINIMAX01_STEP_CHANNEL"] = kind
    channel = step_channel.open_channel(step_channel.message_group())
    expected = "ShmChannel" if kind == "shm" else "GlooChannel"
    assert type(channel).__name__ == expected
    if dist.get_rank() == 0:
        for m in _messages():
            channel.send(m)
        got = None
    else:
        got = [channel.recv() for _ in _messages()]
    torch.save(got, out_dir / f"{kind}-rank{dist.get_rank()}.pt")


@pytest.mark.parametrize("kind", ["shm", "gloo"])
def test_messages_arrive_in_order(kind: str, tmp_path: Path) -> None:
    spawn(_rank, 3, (kind, tmp_path), start_method="fork")
    for r in (1, 2):
        assert torch.load(tmp_path / f"{kind}-rank{r}.pt") == _messages()


def _orphan(out_dir: Path) -> None:
    init_distributed("gloo", timeout_s=120)
    channel = step_channel.open_channel(step_channel.message_group())
    if dist.get_rank() == 0:
        channel.send("first")
        os._exit(0)  # rank 0 dies without a shutdown message
    assert channel.recv() == "first"
    t0 = time.monotonic()
    with pytest.raises(step_channel.ChannelClosed):
        channel.recv()
    (out_dir / "closed").write_text(f"{time.monotonic() - t0:.2f}")
    os._exit(0)  # skip the process-group teardown, whose peer is gone


def test_follower_stops_when_rank0_dies(tmp_path: Path) -> None:
    try:
        spawn(_orphan, 2, (tmp_path,), start_method="fork")
    except Exception:  # the start method reports rank 0's abrupt exit; what matters is the follower's file
        pass
    assert (tmp_path / "closed").exists(), "the follower never noticed that rank 0 was gone"
