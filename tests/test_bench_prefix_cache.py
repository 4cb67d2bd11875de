"""bench/prefix_cache.py runs end to end in its CPU smoke mode (a few requests of the tiny model): all workloads,
caching on and off, identical replies, and a hit rate that only a working cache gives."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "prefix_cache.py"


def test_smoke_run_writes_every_workload(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_prefix_cache", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    paths = bench.main(["--smoke", "--out", str(tmp_path)])
    result = json.loads(next(p for p in paths if p.suffix == ".json").read_text())
    sections = result["sections"]
    assert set(sections) == {"multi-turn", "many users", "one chat at a time"}
    for rows in sections.values():
        on, off, ratio = rows
        assert (on["caching"], off["caching"]) == ("on", "off")
        done, total = map(int, ratio["identical_replies"].split("/"))
        assert done == total == on["requests"] == off["requests"]
        assert on["hit_rate"] > 0.5 and "hit_rate" not in off
    assert (tmp_path / paths[1].name).exists()
