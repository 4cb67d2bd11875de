"""bench/prefix_cache.py runs end to end in its CPU smoke mode (a few requests of the tiny model): all workloads,
caching on and off, identical replies, and a hit rate that only a working cache gives; in one process and with
`--tp 2` (two gloo processes: rank 0's engine decides, the other rank mirrors its cache operations)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench" / "prefix_cache.py"
EXACT = "one chat at a time"  # the workload whose replies must be identical in any layout (nothing else batched)


def check_sections(sections: dict[str, list[dict[str, Any]]], identical: set[str]) -> None:
    """Every workload has its on / off / ratio rows over the same requests, a hit rate only with caching on
    (> 0.5: the workloads are built to share most of their prompts), and all replies identical in `identical`."""
    assert set(sections) == {"multi-turn", "many users", EXACT}
    for name, rows in sections.items():
        on, off, ratio = rows
        assert (on["caching"], off["caching"]) == ("on", "off")
        same, total = map(int, ratio["identical_replies"].split("/"))
        assert total == on["requests"] == off["requests"]
        if name in identical:
            assert same == total, name
        assert on["hit_rate"] > 0.5 and "hit_rate" not in off


def test_smoke_run_writes_every_workload(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_prefix_cache", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    paths = bench.main(["--smoke", "--out", str(tmp_path)])
    result = json.loads(next(p for p in paths if p.suffix == ".json").read_text())
    check_sections(result["sections"], identical=set(result["sections"]))  # fp32, one process: every reply
    assert (tmp_path / paths[1].name).exists()


def test_smoke_run_on_two_ranks(tmp_path: Path) -> None:
    """In a process of its own, so that its process group and follower process never touch the test process;
    the timeout only catches a hang (a rank stuck in a collective)."""
    run = subprocess.run([sys.executable, str(BENCH), "--smoke", "--tp", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (path,) = tmp_path.glob("prefix-cache-cpu-tp2-*.json")
    result = json.loads(path.read_text())
    assert result["meta"]["layout"].startswith("tp 2, ep 1: 2 processes (gloo)")
    check_sections(result["sections"], identical={EXACT})
