"""Grouped expert GEMMs for the top-k mixture (torch reference: moe_ref.py), no Python loop over experts.

Plan (all on the device, no host sync, so the decode step can be captured in a CUDA graph):
1. Sort the T·k (token, expert) assignments by expert: `order` [T·k], row offsets `offs` [E+1], and the
   cumulative count of BM-row blocks per expert `blk` [E+1].
2. Up kernel: each program owns BM sorted rows of ONE expert and BN columns of the intermediate dim; it
   gathers the token rows of x, multiplies by the expert's w1 and w3 column blocks (two accumulators) and
   writes silu(w1·x) ⊙ (w3·x) in bf16: the SwiGLU is fused, h [T·k, 2I] never exists.
3. Down kernel: same row blocks, act @ w2[e]ᵀ, scaled by the routing weight, stored at the assignment's
   unsorted position, so the top-k combine is a plain reshape-sum.
Each expert's weight tile is read once per BM-row block: with few tokens (decode) there is one block per
active expert, so the kernels stream only the active experts' weights (weight-bandwidth bound); with many
tokens (prefill) large tiles make them tensor-core bound. The grid is an upper bound on the number of row
blocks (T·k/BM + min(E, T·k)); surplus programs exit at once.

The same two kernels serve int8 experts (quant.py, through the op `moe_experts_int8`) under the constexpr
INT8_W: int8 weight tiles are widened to the activation dtype in registers (exact) and the fp32 accumulators
are multiplied by the per-output-channel scales after the K loop (before the SwiGLU in the up kernel, before
the routing weight in the down kernel): half the weight bytes for the bandwidth-bound decode.

`torch._grouped_mm` (CUTLASS) is the alternative for the compute-bound case: `grouped_mm_experts` uses it
with the same sort; kernels/dispatch.py picks whichever was faster on the device (docs/kernels.md).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from minimax01.kernels.fused_ops import silu_mul
from minimax01.kernels.triton_common import cast, dot, interpreting, swizzle, widen


@triton.jit
def _block_rows(pid, blk_ptr, offs_ptr, order_ptr, E: tl.constexpr, EP: tl.constexpr, BM: tl.constexpr):
    """Expert e, sorted rows [BM] and their validity mask for row block `pid` (pid < blk[E])."""
    idx = tl.arange(0, EP)
    cum = tl.load(blk_ptr + 1 + idx, mask=idx < E, other=2**30)
    e = tl.sum((cum <= pid).to(tl.int32), axis=0)
    rows = (tl.load(offs_ptr + e) + (pid - tl.load(blk_ptr + e)) * BM + tl.arange(0, BM)).to(tl.int64)
    rmask = rows < tl.load(offs_ptr + e + 1)
    # Rows past the expert's end point at assignment 0: loads stay in bounds, stores are masked.
    src = tl.load(order_ptr + rows, mask=rmask, other=0)
    return e, rows, rmask, src


@triton.jit
def _weight_tile(ptrs, nmask, like, INT8_W: tl.constexpr, INTERPRET: tl.constexpr):
    """Weight tile [BK, BN] ready for the dot with `like`: as stored, or int8 widened in registers (its
    per-channel scale multiplies the fp32 accumulator after the K loop, once instead of per tile)."""
    w = tl.load(ptrs, mask=nmask[None, :], other=0)
    if INT8_W:
        w = widen(w, like, INTERPRET)
    return w


@triton.jit
def _moe_up_kernel(
    x_ptr, w_ptr, s_ptr, act_ptr, order_ptr, offs_ptr, blk_ptr,
    num_m, N, K, stride_xt, stride_we, stride_wn, stride_se, stride_at,
    TOPK: tl.constexpr, E: tl.constexpr, EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, GROUP_M: tl.constexpr, INT8_W: tl.constexpr, INTERPRET: tl.constexpr,
):
    # act[row] = silu(w1·x[tok]) ⊙ (w3·x[tok]) for BM sorted rows of one expert and BN columns; with INT8_W
    # w1 = s1 · q1 and w3 = s3 · q3 (s_ptr: [E, 2N] fp32 scales; unused, may be None, otherwise).
    pid_m, pid_n = swizzle(tl.program_id(0), num_m, (N + BN - 1) // BN, GROUP_M)
    if pid_m < tl.load(blk_ptr + E):
        e, rows, rmask, src = _block_rows(pid_m, blk_ptr, offs_ptr, order_ptr, E, EP, BM)
        tok = src // TOPK
        offs_n = pid_n * BN + tl.arange(0, BN)
        nmask = offs_n < N
        offs_k = tl.arange(0, BK)
        a_ptrs = x_ptr + tok[:, None] * stride_xt + offs_k[None, :]
        w1_ptrs = w_ptr + e.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]  # [BK, BN]
        w3_ptrs = w1_ptrs + N * stride_wn
        acc1 = tl.zeros((BM, BN), dtype=tl.float32)
        acc3 = tl.zeros((BM, BN), dtype=tl.float32)
        for _ in range(0, K, BK):  # K % BK == 0 (checked by the wrapper)
            a = tl.load(a_ptrs)
            acc1 = dot(a, _weight_tile(w1_ptrs, nmask, a, INT8_W, INTERPRET), acc1, INTERPRET)
            acc3 = dot(a, _weight_tile(w3_ptrs, nmask, a, INT8_W, INTERPRET), acc3, INTERPRET)
            a_ptrs += BK
            w1_ptrs += BK
            w3_ptrs += BK
        if INT8_W:  # the scales of w1 and w3 go in before the SwiGLU, which is not linear
            s_row = s_ptr + e.to(tl.int64) * stride_se
            acc1 *= tl.load(s_row + offs_n, mask=nmask, other=0.0)[None, :]
            acc3 *= tl.load(s_row + N + offs_n, mask=nmask, other=0.0)[None, :]
        act = acc1 / (1.0 + tl.exp(-acc1)) * acc3  # silu(w1·x) ⊙ w3·x
        tl.store(act_ptr + rows[:, None] * stride_at + offs_n[None, :], cast(act, act_ptr.dtype.element_ty, INTERPRET),
                 mask=rmask[:, None] & nmask[None, :])


@triton.jit
def _moe_down_kernel(
    act_ptr, w_ptr, s_ptr, y_ptr, order_ptr, rw_ptr, offs_ptr, blk_ptr,
    num_m, N, K, stride_at, stride_we, stride_wn, stride_se, stride_yt,
    E: tl.constexpr, EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    GROUP_M: tl.constexpr, INT8_W: tl.constexpr, INTERPRET: tl.constexpr,
):
    # y[assignment] = routing weight · (act[row] @ w2ᵀ), stored at the assignment's unsorted position; with
    # INT8_W w2 = s2 · q2 (s_ptr: [E, N] fp32 scales; unused, may be None, otherwise).
    pid_m, pid_n = swizzle(tl.program_id(0), num_m, (N + BN - 1) // BN, GROUP_M)
    if pid_m < tl.load(blk_ptr + E):
        e, rows, rmask, dst = _block_rows(pid_m, blk_ptr, offs_ptr, order_ptr, E, EP, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        nmask = offs_n < N
        offs_k = tl.arange(0, BK)
        a_ptrs = act_ptr + tl.where(rmask, rows, 0)[:, None] * stride_at + offs_k[None, :]
        w_ptrs = w_ptr + e.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]  # [BK, BN]
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for _ in range(0, K, BK):
            a = tl.load(a_ptrs)
            acc = dot(a, _weight_tile(w_ptrs, nmask, a, INT8_W, INTERPRET), acc, INTERPRET)
            a_ptrs += BK
            w_ptrs += BK
        if INT8_W:
            acc *= tl.load(s_ptr + e.to(tl.int64) * stride_se + offs_n, mask=nmask, other=0.0)[None, :]
        rw = tl.load(rw_ptr + dst, mask=rmask, other=0.0).to(tl.float32)  # routing weight of the assignment
        y = cast(acc * rw[:, None], y_ptr.dtype.element_ty, INTERPRET)
        tl.store(y_ptr + dst[:, None] * stride_yt + offs_n[None, :], y, mask=rmask[:, None] & nmask[None, :])


def sort_by_expert(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assignments sorted by expert. Returns (order [T·k] int64: position in the flattened [T, k] of each
    sorted row, counts [E] int64, offs [E+1] int32 row offsets). Device ops only (no sync)."""
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=ids.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # bincount would sync on its max()
    offs = torch.zeros(num_experts + 1, dtype=torch.int32, device=ids.device)
    offs[1:] = counts.cumsum(0)
    return order, counts, offs


def row_blocks(counts: torch.Tensor, tk: int, bm: int) -> tuple[torch.Tensor, int]:
    """BM-row blocks of the tk expert-sorted rows (counts [E] per expert): blk [E+1] int32, expert e's blocks
    being blk[e]..blk[e+1] (device ops), and an upper bound on blk[E] known without a sync (every expert's last
    block may be partial)."""
    num_experts = counts.shape[0]
    blk = torch.zeros(num_experts + 1, dtype=torch.int32, device=counts.device)
    blk[1:] = torch.cumsum((counts + bm - 1) // bm, 0)
    return blk, triton.cdiv(tk, bm) + min(num_experts, tk)


def _config(rows_per_expert: float) -> dict[str, int]:
    """Tile shapes (measured on an H100, docs/kernels.md): BM = 16 for decode (weight streaming), tensor-core
    tiles for prefill."""
    if rows_per_expert <= 16:
        return dict(BM=16, BN=64, BK=128, GROUP_M=1, num_warps=4, num_stages=4)
    if rows_per_expert <= 64:
        return dict(BM=64, BN=64, BK=64, GROUP_M=4, num_warps=4, num_stages=4)
    return dict(BM=128, BN=128, BK=64, GROUP_M=8, num_warps=8, num_stages=3)


def supported(hidden: int, inter: int) -> bool:
    return hidden % 16 == 0 and inter % 16 == 0


def _row_stride(scale: torch.Tensor | None) -> int:
    return 0 if scale is None else scale.stride(0)


def triton_experts(
    x: torch.Tensor,  # [T, hidden]
    weights: torch.Tensor,  # [T, k]
    ids: torch.Tensor,  # [T, k]
    w13: torch.Tensor,  # [E, 2I, hidden] in x.dtype, or int8 with w13_scale
    w2: torch.Tensor,  # [E, hidden, I] in x.dtype, or int8 with w2_scale
    config: dict[str, int] | None = None,
    w13_scale: torch.Tensor | None = None,  # [E, 2I] fp32 per-output-channel scales of int8 w13 (quant.py)
    w2_scale: torch.Tensor | None = None,  # [E, hidden] fp32, likewise for w2
) -> torch.Tensor:
    """Σ_k weights[:, k] · w2(silu(w1 x) ⊙ w3 x) with the two grouped Triton kernels. Returns [T, hidden].
    With scales the weights are int8 (w = scale · q per output row): the same kernels widen the int8 tiles in
    registers and scale the fp32 accumulators, so they stream half the bytes of bf16 weights."""
    int8 = w13_scale is not None
    if int8 != (w2_scale is not None):
        raise ValueError("int8 experts need both w13_scale and w2_scale")
    T, hidden = x.shape
    topk = ids.shape[1]
    E, two_i, _ = w13.shape
    inter = two_i // 2
    TK = T * topk
    if T == 0:
        return torch.zeros_like(x)
    x = x.contiguous()
    if any(t is not None and t.stride(-1) != 1 for t in (w13, w2, w13_scale, w2_scale)):
        raise ValueError("expert weights and scales need a contiguous last dim")
    cfg = dict(config or _config(TK / E))
    BM, BN, GROUP_M = cfg.pop("BM"), cfg.pop("BN"), cfg.pop("GROUP_M")
    bk = cfg.pop("BK")
    bk_up, bk_down = math.gcd(hidden, bk), math.gcd(inter, bk)  # K tiles that divide K: no K masks
    if min(bk_up, bk_down) < 16:
        raise ValueError(f"hidden ({hidden}) and intermediate ({inter}) must be multiples of 16")
    order, counts, offs = sort_by_expert(ids, E)
    blk, num_m = row_blocks(counts, TK, BM)
    EP = triton.next_power_of_2(E)
    interpret = interpreting()

    act = torch.empty(TK, inter, dtype=x.dtype, device=x.device)
    _moe_up_kernel[(num_m * triton.cdiv(inter, BN),)](
        x, w13, w13_scale, act, order, offs, blk, num_m, inter, hidden, x.stride(0), w13.stride(0), w13.stride(1),
        _row_stride(w13_scale), act.stride(0), TOPK=topk, E=E, EP=EP, BM=BM, BN=BN, BK=bk_up, GROUP_M=GROUP_M,
        INT8_W=int8, INTERPRET=interpret, **cfg)
    y = torch.empty(TK, hidden, dtype=x.dtype, device=x.device)
    _moe_down_kernel[(num_m * triton.cdiv(hidden, BN),)](
        act, w2, w2_scale, y, order, weights.reshape(-1), offs, blk, num_m, hidden, inter, act.stride(0),
        w2.stride(0), w2.stride(1), _row_stride(w2_scale), y.stride(0), E=E, EP=EP, BM=BM, BN=BN, BK=bk_down,
        GROUP_M=GROUP_M, INT8_W=int8, INTERPRET=interpret, **cfg)
    return y.view(T, topk, hidden).sum(1)  # the k partial outputs of each token (fp32 accumulate, one rounding)


def grouped_mm_experts(
    x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    """Same function through torch._grouped_mm (CUTLASS grouped GEMM) on the expert-sorted rows."""
    T, hidden = x.shape
    topk = ids.shape[1]
    order, _, offs = sort_by_expert(ids, w13.shape[0])
    ends = offs[1:]
    h = torch._grouped_mm(x[order // topk], w13.transpose(1, 2), offs=ends)  # [T·k, 2I]
    act = silu_mul(h)  # [T·k, I] silu(w1 x) ⊙ w3 x, one fused pass over h
    y_sorted = torch._grouped_mm(act, w2.transpose(1, 2), offs=ends)  # [T·k, hidden]
    y = torch.empty_like(y_sorted)
    y[order] = y_sorted * weights.reshape(-1)[order, None]
    return y.view(T, topk, hidden).sum(1)

