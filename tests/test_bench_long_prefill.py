"""bench/long_prefill.py --smoke: the end-to-end long-prefill benchmark runs on tiny dims on the CPU and its tables
hang together (the per-op split adds up to the measured time, every op has a floor, the projection has a total)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_long_prefill_bench_smoke(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "long_prefill.py"), "--smoke", "--results-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)  # the limit only catches a hang
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (path,) = tmp_path.glob("long-prefill-smoke-*.json")
    sections = json.loads(path.read_text())["sections"]
    rows = sections["prefill"]
    assert [r["n"] for r in rows] == [1024, 2048] and all(r["status"] == "ok" for r in rows)
    for r in rows:
        split = [s for s in sections["time split"] if s["n"] == r["n"]]
        assert len(split) == 7 and all(s["floor_s"] > 0 for s in split)
        assert abs(sum(s["measured_s"] for s in split) - r["time_s"]) < 1e-6 * r["time_s"]
        assert 0 < r["pair_attention_only_s"] < r["pair_s"] < r["time_s"]
    (projection,) = [v for k, v in sections.items() if k.startswith("projection")]
    totals = [p for p in projection if p["op"] == "TOTAL"]
    assert len(totals) == 2 and all(0 < t["floor_s"] < t["projected_s"] for t in totals)
    assert "full model projected" in run.stdout
