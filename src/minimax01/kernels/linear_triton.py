"""Row-invariant GEMM for the model's dense projections in prefill steps: y = x Wᵀ, where a row of y is computed
the same way whatever the number of rows.

Why: prefix caching (engine/prefix_cache.py) restores a prompt's prefix and prefills only the rest, so a token is
computed in a chunk of another length with caching on than off. cuBLAS picks its kernel by the whole shape and,
for narrow outputs (the router's 32 columns, the 1024 key / value columns of a softmax layer), one whose sums
depend on the row count (split-K): on an H200 a bf16 token's router logits then differed with the chunk length
and greedy tokens of the restored run differed. Here every configuration walks the reduction dim in the same
BK = 64 steps from 0 upwards, one tensor-core accumulation each, so a row's sums are fixed; the row and
column tile shapes, chosen by the (fixed) output width only, do not enter a row's arithmetic.
Torch reference: torch.nn.functional.linear.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minimax01.kernels.triton_common import cast, dot, interpreting, swizzle

BK = 64  # the reduction step of every configuration: the one thing a row's result depends on


def config_for(n: int) -> dict[str, int]:
    """Tiles by output width (never by row count: that is what keeps a row's sums fixed). Narrow outputs (router,
    sharded key/value heads) take narrow column tiles. Measured on an H200 at 8192 rows (bench/linear.py --sweep,
    bench/results/linear-sweep-2026-11-30): k/v (1024 wide) 0.20 ms with 128 x 128 tiles and 8 warps against 0.25
    with 64 x 128 and 4; the wide projections within 1-3 % of the best of 11 configs (256 x 128, which would
    halve the programs of short prefill chunks)."""
    if n <= 64:
        return dict(BM=64, BN=max(16, triton.next_power_of_2(n)), GROUP_M=1, num_warps=4, num_stages=4)
    if n <= 2048:
        return dict(BM=128, BN=128, GROUP_M=8, num_warps=8, num_stages=3)
    return dict(BM=128, BN=256, GROUP_M=8, num_warps=8, num_stages=3)


@triton.jit
def _linear_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                   BM: tl.constexpr, BN: tl.constexpr, BK_: tl.constexpr, GROUP_M: tl.constexpr,
                   INTERPRET: tl.constexpr):
    pid_m, pid_n = swizzle(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK_)
    rmask, nmask = offs_m < M, offs_n < N
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]  # [BM, BK]
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]  # [BK, BN]: Wᵀ tile
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK_):
        kmask = offs_k < K - k
        a = tl.load(x_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=nmask[None, :] & kmask[:, None], other=0.0)
        acc = dot(a, b, acc, INTERPRET)
        x_ptrs += BK_
        w_ptrs += BK_
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, cast(acc, y_ptr.dtype.element_ty, INTERPRET), mask=rmask[:, None] & nmask[None, :])


def linear(
    x: torch.Tensor,  # [..., K], last dim contiguous
    weight: torch.Tensor,  # [N, K], last dim contiguous, x's dtype
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """x Wᵀ: [..., N] in x.dtype, fp32 accumulation."""
    K = x.shape[-1]
    N = weight.shape[0]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError("x and weight need a contiguous last dim")
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M:
        cfg = dict(config or config_for(N))
        BM, BN = cfg.pop("BM"), cfg.pop("BN")
        grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
        _linear_kernel[grid](x2, weight, y, M, N, K, x2.stride(0), weight.stride(0), y.stride(0),
                             BM=BM, BN=BN, BK_=BK, GROUP_M=cfg.pop("GROUP_M"), INTERPRET=interpreting(), **cfg)
    return y.reshape(*x.shape[:-1], N)
