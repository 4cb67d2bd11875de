"""Run a script that compiles Triton kernels for Hopper (sm_90) on a machine without a GPU: Triton lowers to PTX
and its bundled ptxas assembles, no driver needed. The interpreter tests run a kernel's arithmetic but not the
compiler, which rejects what the interpreter accepts; the *_compile tests catch that before GPU time is spent.

The script runs in a subprocess without TRITON_INTERPRET: the kernel tests set it before triton is imported, and
an interpreted @triton.jit cannot be compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compile_for_hopper(script: str) -> str:
    """stdout of `script` run with src/ on the path; skips where this Triton has no bundled ptxas."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the launch's default; set only to silence its warning
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("this Triton has no bundled ptxas")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
