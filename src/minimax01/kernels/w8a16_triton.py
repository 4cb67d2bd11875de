"""Triton weight-only int8 GEMM (w8a16): y = x @ (q · scale[:, None])ᵀ with x in bf16/fp16, q int8 [N, K] and
one fp32 scale per output channel. Torch reference: w8a16_ref.w8a16_linear_ref.

Decode is weight-bandwidth bound (M = a few tokens, the whole weight is read once per step), so reading one
byte per weight instead of two is the speed-up. The kernel loads int8 tiles, widens them to the activation
dtype in registers (|q| <= 127 is exact in bf16/fp16), accumulates in fp32 and applies the per-channel scale
once in the epilogue. For many rows the torch reference (cast + cuBLAS) is faster: kernels/dispatch.py
chooses. The int8 experts' kernels are moe_triton's and moe_decode's, run with int8 weights and their scales
(INT8_W).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minimax01.kernels.triton_common import cast, dot, interpreting, widen

_MAX_BLOCK_M = 64  # rows per program; M = 128 runs two row blocks (the configuration measured)
_INTERPRET = interpreting()


def _configs() -> list:
    if _INTERPRET:  # the CPU interpreter: one small config, no tuning runs
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    # Decode shapes have N/BLOCK_N programs only: small BLOCK_N keeps all SMs busy streaming weights.
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bn, bk, w, s in [(16, 256, 4, 4), (32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4),
                                 (64, 256, 4, 3), (128, 128, 8, 4)]]


@triton.autotune(configs=_configs(), key=["BLOCK_M", "N", "K"])
@triton.heuristics({"EVEN_N": lambda a: a["N"] % a["BLOCK_N"] == 0,
                    "EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})
@triton.jit
def _w8a16_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, INTERPRET: tl.constexpr):
    # grid: (N tiles, M tiles); each program owns y[rm, rn] and streams W[rn, :] once.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]  # [BM, BK]
    w_ptrs = w_ptr + rn[:, None] * stride_wn + rk[None, :]  # [BN, BK]
    m_ok = rm[:, None] < M
    n_ok = rn[:, None] < N  # rows of the W tile
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            xt = tl.load(x_ptrs, mask=m_ok, other=0.0)
            if EVEN_N:  # the real model's shapes: unmasked, vectorised weight loads
                wt = tl.load(w_ptrs)
            else:
                wt = tl.load(w_ptrs, mask=n_ok, other=0)
        else:
            k_ok = (k0 + rk)[None, :] < K
            xt = tl.load(x_ptrs, mask=m_ok & k_ok, other=0.0)
            wt = tl.load(w_ptrs, mask=n_ok & k_ok, other=0)
        acc = dot(xt, tl.trans(widen(wt, xt, INTERPRET)), acc, INTERPRET)  # fp32 accumulation
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    scale = tl.load(s_ptr + rn, mask=rn < N, other=0.0)  # [BN] fp32
    y = cast(acc * scale[None, :], y_ptr.dtype.element_ty, INTERPRET)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y, mask=m_ok & (rn[None, :] < N))


def w8a16_linear_triton(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Triton kernel: x [..., K] (bf16/fp16) @ (q [N, K] int8 · scale [N] fp32)ᵀ -> [..., N] in x.dtype."""
    N, K = q.shape
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M:
        block_m = min(max(16, triton.next_power_of_2(M)), _MAX_BLOCK_M)  # tl.dot needs >= 16 rows
        q = q if q.stride(-1) == 1 else q.contiguous()
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, block_m))  # noqa: E731
        _w8a16_kernel[grid](x2, q, scale, y, M, N, K, x2.stride(0), q.stride(0), y.stride(0), BLOCK_M=block_m,
                            INTERPRET=_INTERPRET)
    return y.reshape(*x.shape[:-1], N)
