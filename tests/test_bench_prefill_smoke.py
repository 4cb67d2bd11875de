"""bench/prefill_kernels.py --smoke: the benchmark script runs end to end on tiny shapes (CPU, Triton
interpreter; no timings) and prints the MoE choice row in the form moe_prefill_choice.MEASURED takes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent


def test_prefill_bench_smoke() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "prefill_kernels.py"), "--smoke"],
                         capture_output=True, text=True, timeout=1800)  # the limit only catches a hang
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "err_segmented_o" in run.stdout and "err_per_expert" in run.stdout
    assert "('cpu', 4, 64, 96, 2): 'grouped'" in run.stdout
