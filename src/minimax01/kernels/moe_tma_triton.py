"""Prefill experts for Hopper: expert-sorted, block-padded rows read through TMA by persistent grouped GEMMs.

The function of moe_triton.triton_experts (Σ_k w_k · w2(silu(w1 x) ⊙ w3 x)), laid out for the compute-bound
prefill:
1. Sort the T·k assignments by expert (moe_triton.sort_by_expert) and gather the token rows of x once into
   `xs` [rows_padded, hidden], each expert's segment starting at a multiple of BM (padding rows are never
   read back into a real row). Every BM-row block then belongs to one expert and is contiguous, so its A
   tiles are TMA loads, like the weight tiles (w13 seen as [E·2I, hidden], w2 as [E·hidden, I]).
2. Up kernel: act[padded row] = silu(w1·x) ⊙ (w3·x), the w1 and w3 column blocks in two accumulators (the
   SwiGLU fused, h [T·k, 2I] never exists), stored in the same padded layout.
3. Down kernel: act @ w2[e]ᵀ scaled by the routing weight, stored at the assignment's unsorted position, so
   the top-k combine is a plain reshape-sum.
Both kernels are persistent (one program per SM looping over tiles) and walk the tiles expert by expert:
within an expert, groups of GROUP_M row blocks sweep the column blocks together, so each weight tile is read
from HBM about once per group and served to the group's other row blocks from L2 (at ~256 rows per expert
the weights are the larger stream).

Row invariance (kernels/moe_prefill_choice.py says why it matters): the tile config is fixed per shape
(`config_for`, never by token count) and a row's dot products run over K in the same BK steps in every tile,
so a row's result does not depend on how many rows the step has or where its block sits.

TMA needs a compiled kernel with descriptors (`triton.tools.tensor_descriptor.TensorDescriptor`); elsewhere
(`tma=False`, or a Triton whose interpreter lacks them) the same kernels load the same tiles through pointers.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from minimax01.kernels.moe_triton import row_blocks, sort_by_expert
from minimax01.kernels.triton_common import cast, dot, interpreting, num_sms, swizzle

# The model's shape on Hopper (32 experts, 6144 -> 9216): 128-row blocks; up: 128 columns each of w1 and w3
# (two 128 x 128 fp32 accumulators), down: 256 columns; 8 warps, 3 stages (48 KB of tiles per stage).
# Measured slower on an H200 and removed (bench/results/prefill-kernels-moe-2026-11-30): the tile and K loops
# pipelined as one (tl.range flatten=True: 6.14 ms vs 5.96 at 4096 tokens, 21.3 vs 19.5 at 16K) and an expert's
# last block of at most BM/2 rows as a half-height tile (6.60 ms vs 5.96 at 4096 tokens).
DEFAULT = dict(BM=128, BN_UP=128, BN_DOWN=256, BK=64, GROUP_M=8, num_warps=8, num_stages=3, tma=True)


def _largest_divisor(n: int, options: tuple[int, ...]) -> int:
    return next((b for b in options if n % b == 0), 0)


def config_for(hidden: int, inter: int) -> dict:
    """The tile config for a shape (never for a token count). Column and K tiles must divide their dims: a TMA
    tile does not stop at an expert's edge."""
    return dict(DEFAULT, BN_UP=_largest_divisor(inter, (128, 64, 32, 16)),
                BN_DOWN=_largest_divisor(hidden, (256, 128, 64, 32, 16)),
                BK=_largest_divisor(hidden, tuple(b for b in (64, 32, 16) if inter % b == 0)))


def supported(hidden: int, inter: int) -> bool:
    return hidden % 16 == 0 and inter % 16 == 0


@functools.lru_cache(maxsize=None)
def tma_available() -> bool:
    """Whether this Triton has host-side tensor descriptors (and, under the interpreter, runs them)."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except Exception:
        return False
    if interpreting():
        from triton.runtime import interpreter

        return hasattr(interpreter, "TensorDescriptor")  # the interpreter imports it where it runs them
    return True


@triton.jit
def _gather_kernel(x_ptr, xs_ptr, order_ptr, pos_ptr, K, stride_x, stride_xs,
                   TOPK: tl.constexpr, BLOCK: tl.constexpr):
    # xs[pos[r]] = x[order[r] // TOPK]: sorted row r to its padded slot.
    r = tl.program_id(0)
    tok = (tl.load(order_ptr + r) // TOPK).to(tl.int64)
    p = tl.load(pos_ptr + r).to(tl.int64)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        m = offs < K
        tl.store(xs_ptr + p * stride_xs + offs, tl.load(x_ptr + tok * stride_x + offs, mask=m), mask=m)


@triton.jit
def _tile(t, blk_ptr, num_n, E: tl.constexpr, EP: tl.constexpr, GROUP_M: tl.constexpr):
    """(expert, its row block, column block) of tile t: experts in order; inside one, GROUP_M row blocks side by
    side sweep the column blocks (moe_triton's swizzle on the expert's own blocks)."""
    idx = tl.arange(0, EP)
    cum = tl.load(blk_ptr + 1 + idx, mask=idx < E, other=0)
    e = tl.sum((tl.where(idx < E, cum * num_n, 2**30) <= t).to(tl.int32), axis=0)
    b0 = tl.load(blk_ptr + e)
    b, n = swizzle(t - b0 * num_n, tl.load(blk_ptr + e + 1) - b0, num_n, GROUP_M)
    return e, b, n


@triton.jit
def _up_tile(row0, e, n, xs_desc, xs_ptr, w_desc, w_ptr, act_desc, act_ptr, N, K, stride_xs, stride_w,
             stride_act, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, TMA: tl.constexpr,
             INTERPRET: tl.constexpr):
    # act[padded rows row0.., columns n·BN..] = silu(x·w1ᵀ) ⊙ (x·w3ᵀ), w1 = w13[e, :N], w3 = w13[e, N:].
    # Every tile is full (N % BN == 0, K % BK == 0, segments padded): no masks.
    w1_row = e * 2 * N + n * BN
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)
    acc3 = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        if TMA:
            a = xs_desc.load([row0, k])
            w1 = w_desc.load([w1_row, k])
            w3 = w_desc.load([w1_row + N, k])
        else:
            a = tl.load(xs_ptr + (row0 + offs_m).to(tl.int64)[:, None] * stride_xs + k + offs_k[None, :])
            w_rows = (w1_row + offs_n).to(tl.int64)[:, None] * stride_w + k + offs_k[None, :]
            w1 = tl.load(w_ptr + w_rows)
            w3 = tl.load(w_ptr + w_rows + N * stride_w)
        acc1 = dot(a, tl.trans(w1), acc1, INTERPRET)
        acc3 = dot(a, tl.trans(w3), acc3, INTERPRET)
    act = cast(acc1 / (1.0 + tl.exp(-acc1)) * acc3, act_ptr.dtype.element_ty, INTERPRET)
    if TMA:
        act_desc.store([row0, n * BN], act)
    else:
        tl.store(act_ptr + (row0 + offs_m).to(tl.int64)[:, None] * stride_act + n * BN + offs_n[None, :], act)


@triton.jit
def _up_kernel(
    xs_desc, xs_ptr, w_desc, w_ptr, act_desc, act_ptr, blk_ptr,
    N, K, stride_xs, stride_w, stride_act,
    E: tl.constexpr, EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    GROUP_M: tl.constexpr, NUM_PROGS: tl.constexpr, TMA: tl.constexpr, INTERPRET: tl.constexpr,
):
    num_n = N // BN
    num_tiles = tl.load(blk_ptr + E) * num_n
    for t in range(tl.program_id(0), num_tiles, NUM_PROGS):
        e, b, n = _tile(t, blk_ptr, num_n, E, EP, GROUP_M)
        _up_tile((tl.load(blk_ptr + e) + b) * BM, e, n, xs_desc, xs_ptr, w_desc, w_ptr, act_desc, act_ptr, N, K,
                 stride_xs, stride_w, stride_act, BM, BN, BK, TMA, INTERPRET)


@triton.jit
def _down_tile(row0, e, b, n, count, act_desc, act_ptr, w_desc, w_ptr, y_ptr, order_ptr, rw_ptr, first, N, K,
               stride_act, stride_w, stride_y, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               TMA: tl.constexpr, INTERPRET: tl.constexpr):
    # y[assignment] = routing weight · (act[padded row] @ w2[e]ᵀ) for the block's real rows (block b of expert
    # e's `count` rows, sorted from `first` on).
    w_row = e * N + n * BN
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        if TMA:
            a = act_desc.load([row0, k])
            w = w_desc.load([w_row, k])
        else:
            a = tl.load(act_ptr + (row0 + offs_m).to(tl.int64)[:, None] * stride_act + k + offs_k[None, :])
            w = tl.load(w_ptr + (w_row + offs_n).to(tl.int64)[:, None] * stride_w + k + offs_k[None, :])
        acc = dot(a, tl.trans(w), acc, INTERPRET)
    local = b * BM + offs_m  # row within the expert's segment
    rmask = local < count
    dst = tl.load(order_ptr + first + local, mask=rmask, other=0)
    rw = tl.load(rw_ptr + dst, mask=rmask, other=0.0).to(tl.float32)
    y = cast(acc * rw[:, None], y_ptr.dtype.element_ty, INTERPRET)
    tl.store(y_ptr + dst[:, None] * stride_y + n * BN + offs_n[None, :], y, mask=rmask[:, None])


@triton.jit
def _down_kernel(
    act_desc, act_ptr, w_desc, w_ptr, y_ptr, order_ptr, rw_ptr, offs_ptr, blk_ptr,
    N, K, stride_act, stride_w, stride_y,
    E: tl.constexpr, EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    GROUP_M: tl.constexpr, NUM_PROGS: tl.constexpr, TMA: tl.constexpr, INTERPRET: tl.constexpr,
):
    num_n = N // BN
    num_tiles = tl.load(blk_ptr + E) * num_n
    for t in range(tl.program_id(0), num_tiles, NUM_PROGS):
        e, b, n = _tile(t, blk_ptr, num_n, E, EP, GROUP_M)
        first = tl.load(offs_ptr + e)
        _down_tile((tl.load(blk_ptr + e) + b) * BM, e, b, n, tl.load(offs_ptr + e + 1) - first, act_desc, act_ptr,
                   w_desc, w_ptr, y_ptr, order_ptr, rw_ptr, first, N, K, stride_act, stride_w, stride_y, BM, BN, BK,
                   TMA, INTERPRET)


def _descriptor(t: torch.Tensor, block: list[int], tma: bool):
    if not tma:
        return t  # unused placeholder
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(t, block)


def tma_experts(
    x: torch.Tensor,  # [T, hidden]
    weights: torch.Tensor,  # [T, k]
    ids: torch.Tensor,  # [T, k]
    w13: torch.Tensor,  # [E, 2I, hidden] in x.dtype, contiguous
    w2: torch.Tensor,  # [E, hidden, I] in x.dtype, contiguous
    config: dict | None = None,
) -> torch.Tensor:
    """Σ_k weights[:, k] · w2(silu(w1 x) ⊙ w3 x) through the padded sorted rows. Returns [T, hidden].
    config: tile config (default `config_for` the shape; never choose it by token count)."""
    T, hidden = x.shape
    topk = ids.shape[1]
    E, two_i, _ = w13.shape
    inter = two_i // 2
    if T == 0:
        return torch.zeros_like(x)
    cfg = dict(config or config_for(hidden, inter))
    BM, BN_UP, BN_DOWN, BK, GROUP_M = (cfg.pop(k) for k in ("BM", "BN_UP", "BN_DOWN", "BK", "GROUP_M"))
    tma = bool(cfg.pop("tma", True)) and tma_available()
    if not (BN_UP and BN_DOWN and BK) or inter % BN_UP or hidden % BN_DOWN or hidden % BK or inter % BK:
        raise ValueError(f"tiles {BN_UP}/{BN_DOWN}/{BK} must divide intermediate {inter} and hidden {hidden}")
    x = x.contiguous()
    w13, w2 = w13.contiguous(), w2.contiguous()
    TK = T * topk
    dev = x.device
    order, counts, offs = sort_by_expert(ids, E)
    # Row blocks of BM per expert, expert e's from blk[e] on; its segment of the padded rows starts at row
    # blk[e]·BM (the kernels' row of block b: (blk[e] + b)·BM).
    blk, max_blocks = row_blocks(counts, TK, BM)
    # Padded slot of each sorted row: its expert's first padded row + its rank within the expert.
    e_sorted = ids.reshape(-1)[order]
    pos = torch.arange(TK, device=dev) - offs[e_sorted] + blk[e_sorted] * BM
    rows = max_blocks * BM  # padded rows: an upper bound, no sync
    interpret = interpreting()
    # Padding rows stay as the allocator left them: each output row depends on its own A row only, and the
    # down kernel stores real rows only. Zeroed under the interpreter, whose numpy warns on garbage.
    xs = (torch.zeros if interpret else torch.empty)(rows, hidden, dtype=x.dtype, device=dev)
    _gather_kernel[(TK,)](x, xs, order, pos, hidden, x.stride(0), xs.stride(0), TOPK=topk,
                          BLOCK=min(triton.next_power_of_2(hidden), 1024))
    act = torch.empty(rows, inter, dtype=x.dtype, device=dev)
    y = torch.empty(TK, hidden, dtype=x.dtype, device=dev)
    w13_2d, w2_2d = w13.view(E * two_i, hidden), w2.view(E * hidden, inter)
    EP = triton.next_power_of_2(E)
    progs = num_sms(dev)
    flags = dict(E=E, EP=EP, BM=BM, BK=BK, GROUP_M=GROUP_M, NUM_PROGS=progs, TMA=tma, INTERPRET=interpret, **cfg)
    _up_kernel[(progs,)](
        _descriptor(xs, [BM, BK], tma), xs, _descriptor(w13_2d, [BN_UP, BK], tma), w13_2d,
        _descriptor(act, [BM, BN_UP], tma), act, blk, inter, hidden, xs.stride(0), w13_2d.stride(0),
        act.stride(0), BN=BN_UP, **flags)
    _down_kernel[(progs,)](
        _descriptor(act, [BM, BK], tma), act, _descriptor(w2_2d, [BN_DOWN, BK], tma), w2_2d, y, order,
        weights.reshape(-1), offs, blk, hidden, inter, act.stride(0), w2_2d.stride(0), y.stride(0), BN=BN_DOWN,
        **flags)
    return y.view(T, topk, hidden).sum(1)  # the k partial outputs of each token (fp32 accumulate, one rounding)
