"""Helpers shared by the Triton kernels: the CPU-interpreter fix-ups of `dot`, `cast` and int8 widening, and the
SM count that sizes launches.

Every kernel takes a constexpr INTERPRET flag (`interpreting()` at launch) and routes its bf16 products and
conversions through these helpers, so the same kernel source runs compiled on CUDA and under
TRITON_INTERPRET=1 in the CPU tests.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """Whether Triton runs under its CPU interpreter (TRITON_INTERPRET=1, the CPU tests). The interpreter gets
    two bf16 operations wrong: tl.dot on bf16 operands returns garbage (numpy has no bf16) and fp32→bf16
    conversion truncates. The kernels route both through `dot` and `cast`, which fix them up there."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device`; off CUDA (the interpreter) an H100's 132, so that launch
    heuristics pick the same configurations as on the GPU."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


@triton.jit
def dot(a, b, acc, INTERPRET: tl.constexpr):
    """tl.dot(a, b, acc). Interpreter: fp32 operands, the same function (bf16·bf16 products are exact in fp32
    and the tensor cores accumulate in fp32 too)."""
    if INTERPRET:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def cast(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """x.to(dtype). Interpreter: round fp32 to the nearest even bf16 first, as the GPU's conversion does."""
    if INTERPRET and dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def widen(w, like, INTERPRET: tl.constexpr):
    """int8 tile -> the activation dtype of `like` (exact for |q| <= 127). The CPU interpreter casts int8 -> bf16
    wrongly (Triton 3.9): there the tile goes to fp32, which `dot` uses under the interpreter anyway."""
    if INTERPRET:
        return w.to(tl.float32)
    return w.to(like.dtype)


@triton.jit
def swizzle(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """(row block, column block) of program `pid`: GROUP_M row blocks side by side, so that a wave of programs
    reuses their x rows and weight tiles in L2."""
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    size = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % in_group) % size, (pid % in_group) // size
