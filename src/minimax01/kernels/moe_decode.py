"""The few-token MoE path (decode at small batch): fused top-k routing and per-token expert GEMVs.

At one or two tokens the expert GEMMs are matrix-vector products that stream the selected experts' weights
(2 × 340 MB at Text-01 dims for one token: a 0.23 ms floor on an H100), and what the grouped path adds on top
is fixed cost: the sort by expert (argsort, scatter_add, cumsum, block counts: ~8 tiny kernels of ~2 µs each
in a graph) and tensor-core tiles of which one row in 16 is real. Here nothing is sorted: each program reads
its expert id straight from the routing output.

- `route`: one program per token turns the router logits into renormalised top-k weights and ids (softmax in
  fp32): one kernel for what torch does in five (softmax, topk, sum, div, cast).
- up GEMV: program (assignment a = t·k + j, column block) computes silu(w1[e]·x_t) ⊙ (w3[e]·x_t) for BN
  intermediate columns, fp32 accumulation, one rounding (like moe_triton's up kernel).
- down GEMV: program (token t, column block) sums over the token's k experts: Σ_j w_j · w2[e_j]·act_a in fp32,
  rounded once (the grouped path rounds each expert's share before adding: a smaller error here).

The same expert picked by two tokens is streamed twice, so this pays only while tokens are few
(`dispatch.GEMV_MAX_TOKENS`); the grouped kernels (moe_triton.py) take over above.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minimax01.kernels.triton_common import cast, interpreting


@triton.jit
def _route_kernel(logits_ptr, w_ptr, ids_ptr, stride_lt, E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr,
                  INTERPRET: tl.constexpr):
    t = tl.program_id(0)
    idx = tl.arange(0, EP)
    z = tl.load(logits_ptr + t * stride_lt + idx, mask=idx < E, other=-float("inf")).to(tl.float32)
    p = tl.exp(z - tl.max(z, axis=0))
    p = tl.where(idx < E, p / tl.sum(p, axis=0), -1.0)  # softmax in fp32; padding below every probability
    rank = tl.full([EP], -1, tl.int32)  # j for the j-th pick
    total = 0.0
    for j in tl.static_range(TOPK):
        m = tl.max(p, axis=0)
        pick = tl.min(tl.where(p == m, idx, EP), axis=0)  # the lowest index among ties
        rank = tl.where(idx == pick, j, rank)
        total += m
        p = tl.where(idx == pick, -1.0, p)
    p = tl.exp(z - tl.max(z, axis=0))
    p = p / tl.sum(tl.where(idx < E, p, 0.0), axis=0)  # the same softmax again (the picks overwrote theirs)
    for j in tl.static_range(TOPK):  # in descending order, as torch.topk returns them
        tl.store(ids_ptr + t * TOPK + j, tl.sum(tl.where(rank == j, idx, 0), axis=0).to(tl.int64))
        weight = tl.sum(tl.where(rank == j, p, 0.0), axis=0) / total
        tl.store(w_ptr + t * TOPK + j, cast(weight, w_ptr.dtype.element_ty, INTERPRET))


@triton.jit
def _up_gemv_kernel(x_ptr, w_ptr, s_ptr, ids_ptr, act_ptr, N, K, stride_xt, stride_we, stride_wn, stride_se,
                    stride_at, TOPK: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, INT8_W: tl.constexpr,
                    INTERPRET: tl.constexpr):
    a = tl.program_id(0)  # assignment t·k + j
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    nmask = offs_n < N
    e = tl.load(ids_ptr + a).to(tl.int64)
    x_row = x_ptr + (a // TOPK) * stride_xt
    w1_rows = w_ptr + e * stride_we + offs_n[:, None] * stride_wn  # [BN, 1] rows of w1, contiguous along K
    w3_rows = w1_rows + N * stride_wn
    acc1 = tl.zeros((BN,), dtype=tl.float32)
    acc3 = tl.zeros((BN,), dtype=tl.float32)
    for k0 in range(0, K, BK):  # K % BK == 0 (checked by the wrapper)
        offs_k = k0 + tl.arange(0, BK)
        xk = tl.load(x_row + offs_k).to(tl.float32)[None, :]
        acc1 += tl.sum(tl.load(w1_rows + offs_k[None, :], mask=nmask[:, None], other=0.0).to(tl.float32) * xk, 1)
        acc3 += tl.sum(tl.load(w3_rows + offs_k[None, :], mask=nmask[:, None], other=0.0).to(tl.float32) * xk, 1)
    if INT8_W:  # per-output-channel scales of the int8 rows, applied once after the K loop
        acc1 *= tl.load(s_ptr + e * stride_se + offs_n, mask=nmask, other=0.0)
        acc3 *= tl.load(s_ptr + e * stride_se + N + offs_n, mask=nmask, other=0.0)
    act = acc1 / (1.0 + tl.exp(-acc1)) * acc3  # silu(w1·x) ⊙ w3·x
    tl.store(act_ptr + a * stride_at + offs_n, cast(act, act_ptr.dtype.element_ty, INTERPRET), mask=nmask)


@triton.jit
def _down_gemv_kernel(act_ptr, w_ptr, s_ptr, ids_ptr, rw_ptr, y_ptr, N, K, stride_at, stride_we, stride_wn,
                      stride_se, stride_yt, TOPK: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      INT8_W: tl.constexpr, INTERPRET: tl.constexpr):
    t = tl.program_id(0)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    nmask = offs_n < N
    y = tl.zeros((BN,), dtype=tl.float32)
    for j in tl.static_range(TOPK):  # the token's k experts, combined in fp32
        a = t * TOPK + j
        e = tl.load(ids_ptr + a).to(tl.int64)
        w_rows = w_ptr + e * stride_we + offs_n[:, None] * stride_wn
        acc = tl.zeros((BN,), dtype=tl.float32)
        for k0 in range(0, K, BK):
            offs_k = k0 + tl.arange(0, BK)
            ak = tl.load(act_ptr + a * stride_at + offs_k).to(tl.float32)[None, :]
            acc += tl.sum(tl.load(w_rows + offs_k[None, :], mask=nmask[:, None], other=0.0).to(tl.float32) * ak, 1)
        if INT8_W:
            acc *= tl.load(s_ptr + e * stride_se + offs_n, mask=nmask, other=0.0)
        y += acc * tl.load(rw_ptr + a).to(tl.float32)
    tl.store(y_ptr + t * stride_yt + offs_n, cast(y, y_ptr.dtype.element_ty, INTERPRET), mask=nmask)


def route(logits: torch.Tensor, top_k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """moe_ref.route_ref in one kernel: logits [T, E] -> (weights [T, k] in dtype, ids [T, k] int64)."""
    T, E = logits.shape
    weights = torch.empty(T, top_k, dtype=dtype, device=logits.device)
    ids = torch.empty(T, top_k, dtype=torch.int64, device=logits.device)
    if T:
        _route_kernel[(T,)](logits, weights, ids, logits.stride(0), E=E, EP=triton.next_power_of_2(E), TOPK=top_k,
                            INTERPRET=interpreting(), num_warps=1)
    return weights, ids


def gemv_experts(
    x: torch.Tensor,  # [T, hidden], T small
    weights: torch.Tensor,  # [T, k]
    ids: torch.Tensor,  # [T, k]
    w13: torch.Tensor,  # [E, 2I, hidden], 16-bit or int8
    w2: torch.Tensor,  # [E, hidden, I]
    w13_scale: torch.Tensor | None = None,  # [E, 2I] fp32 per-row scales of int8 weights (quant.py)
    w2_scale: torch.Tensor | None = None,  # [E, hidden]
    block_n: int = 2,  # H100, Text-01 dims, 1 token, graph: 0.248 ms (2 rows), 0.253 (4), 0.281 (16), 0.47 (32)
    block_k: int = 1024,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """Σ_j weights[:, j] · w2(silu(w1 x) ⊙ w3 x) by per-token GEMVs. Returns [T, hidden] in x.dtype. int8
    weights (with both scales) are widened in registers; the int8 -> fp32 conversion is exact."""
    T, hidden = x.shape
    topk = ids.shape[1]
    inter = w13.shape[1] // 2
    bk_up, bk_down = (min(block_k, k & -k) for k in (hidden, inter))  # largest power of two dividing K, capped
    if min(bk_up, bk_down) < 16:
        raise ValueError(f"hidden ({hidden}) and intermediate ({inter}) must be multiples of 16")
    if w13.stride(-1) != 1 or w2.stride(-1) != 1:
        raise ValueError("expert weights need a contiguous last dim")
    int8 = w13_scale is not None
    if int8 != (w2_scale is not None):
        raise ValueError("int8 experts need both w13_scale and w2_scale")
    if int8:
        w13_scale, w2_scale = w13_scale.contiguous(), w2_scale.contiguous()
    x, ids, weights = x.contiguous(), ids.contiguous(), weights.contiguous()
    interpret = interpreting()
    act = torch.empty(T * topk, inter, dtype=x.dtype, device=x.device)
    _up_gemv_kernel[(T * topk, triton.cdiv(inter, block_n))](
        x, w13, w13_scale, ids, act, inter, hidden, x.stride(0), w13.stride(0), w13.stride(1),
        w13_scale.stride(0) if int8 else 0, act.stride(0),
        TOPK=topk, BN=block_n, BK=bk_up, INT8_W=int8, INTERPRET=interpret, num_warps=num_warps, num_stages=num_stages)
    y = torch.empty(T, hidden, dtype=x.dtype, device=x.device)
    _down_gemv_kernel[(T, triton.cdiv(hidden, block_n))](
        act, w2, w2_scale, ids, weights, y, hidden, inter, act.stride(0), w2.stride(0), w2.stride(1),
        w2_scale.stride(0) if int8 else 0, y.stride(0),
        TOPK=topk, BN=block_n, BK=bk_down, INT8_W=int8, INTERPRET=interpret, num_warps=num_warps,
        num_stages=num_stages)
    return y
