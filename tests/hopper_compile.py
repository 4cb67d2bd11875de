"""Run a script that compiles Triton kernels for Hopper (sm_90) on a machine without a GPU: Triton lowers to PTX
and its bundled ptxas assembles, no driver needed. The interpreter tests run a kernel's arithmetic but not the
compiler, which rejects what the interpreter accepts; the *_compile tests catch that before GPU time is spent.

The script runs in a subprocess without TRITON_INTERPRET: the kernel tests set it before triton is imported, and
an interpreted @triton.jit cannot be compiled. It runs after PRELUDE, so it can call
`compile_sm90(fn, types, constexprs, num_warps, num_stages)`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = r'''
import inspect
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_sm90(fn, types, constexprs, num_warps, num_stages):
    # types: the type string of each argument that is not a bf16 pointer (a name ending in _ptr), an i32 stride
    # (a name starting with stride) or a constexpr (every other name).
    names = list(inspect.signature(fn.fn).parameters)
    sig = {n: types.get(n) or ("*bf16" if n.endswith("_ptr") else "i32" if n.startswith("stride") else "constexpr")
           for n in names}
    # pointers and i32 arguments 16-divisible, as the launch specializes them (what lets the loads vectorize)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n].startswith("*") or sig[n] == "i32"}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                   target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages))
'''


def compile_for_hopper(script: str) -> str:
    """stdout of PRELUDE + `script` run with src/ on the path; skips where this Triton has no bundled ptxas."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the launch's default; set only to silence its warning
    proc = subprocess.run([sys.executable, "-c", PRELUDE + script], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("this Triton has no bundled ptxas")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
