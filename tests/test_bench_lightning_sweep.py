"""bench/lightning_sweep.py --smoke: the sweep runs end to end on tiny shapes (CPU, Triton interpreter; no
timings), checks every config against the fp64 reference, prints a winner in prefill_config's form and writes
no result file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent


def test_lightning_sweep_smoke() -> None:
    before = set((ROOT / "bench" / "results").glob("lightning-sweep-*"))
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "lightning_sweep.py"), "--smoke"],
                         capture_output=True, text=True, timeout=1800)  # the limit only catches a hang
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "be16-w4-s3-c64" in run.stdout and "be32-w4-s3-c128" in run.stdout and "err o" in run.stdout
    assert "# winner " in run.stdout and "    return dict(block_e=" in run.stdout, run.stdout[-3000:]
    assert set((ROOT / "bench" / "results").glob("lightning-sweep-*")) == before
