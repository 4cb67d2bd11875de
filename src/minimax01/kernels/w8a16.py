"""Weight-only int8 ops (w8a16): activations in the model dtype, weights int8 with one fp32 scale per output
channel, `y = x @ (q * scale[:, None])ᵀ`.

Decode is weight-bandwidth bound (M = a few tokens, the whole weight is read once per step), so reading one
byte per weight instead of two is the speed-up. The Triton kernel loads int8 tiles, widens them to the
activation dtype in registers (|q| <= 127 is exact in bf16/fp16), accumulates in fp32 and applies the
per-channel scale once in the epilogue. The torch reference computes the same (x @ qᵀ) · scale with torch
ops; it is the oracle in tests and the path on CPU and for large M (prefill is compute bound: one int8 ->
bf16 cast of the weight per call, then cuBLAS). The int8 experts' grouped kernels are moe_triton's, run with
int8 weights and their scales (INT8_W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minimax01.kernels import triton_available, use_triton
from minimax01.kernels.moe_ref import silu_mul_ref

# Largest number of rows the Triton kernel takes. Above it the torch path wins: its cast costs 3 bytes per
# weight (≈ 50 µs for 6144 x 8192 on an H100) on top of a cuBLAS GEMM that stays at the bf16 weight-read time
# up to M ≈ 256, while the kernel's time grows with M (H100, bench/results/quant-2026-11-25: 77 µs at M = 128
# vs ≥ 100 µs for cast + matmul; 114 µs at M = 256 vs ≈ 100 µs).
TRITON_MAX_M = 128
_MAX_BLOCK_M = 64  # rows per program; M = 128 runs two row blocks (the configuration measured)
_TRITON_DTYPES = (torch.bfloat16, torch.float16)  # fp32 would run the dot in tf32: keep it on the reference


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q [..., N, K] int8, scale [..., N] fp32 -> q · scale in `dtype` (product formed in fp32, or fp64 for an
    fp64 result, and rounded once)."""
    compute = torch.promote_types(torch.float32, dtype)
    return (q.to(compute) * scale.to(compute)[..., None]).to(dtype)


def w8a16_linear_ref(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference: x [..., K] @ (q [N, K] · scale [N])ᵀ -> [..., N] in x.dtype, as (x @ qᵀ) · scale like the
    kernel: q is exact in x.dtype and the fp32 scale is applied once to the output (mul_ computes in fp32).
    This moves 3 bytes per weight; dequantizing through fp32 first moved 11 and took 9x the bf16 GEMM time.
    fp16 alone dequantizes first: x @ qᵀ ≈ output / scale (≈ 2500 x the output) can exceed its range."""
    if x.dtype == torch.float16:
        return F.linear(x, dequantize(q, scale, x.dtype))
    return F.linear(x, q.to(x.dtype)).mul_(scale)


if triton_available():
    import triton
    import triton.language as tl

    from minimax01.kernels import moe_decode, moe_triton
    from minimax01.kernels.lightning_triton import cast, dot, interpreting
    from minimax01.kernels.moe_triton import _widen

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
            acc = dot(xt, tl.trans(_widen(wt, xt, INTERPRET)), acc, INTERPRET)  # fp32 accumulation
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


def w8a16_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Dispatch: x [..., K] @ (q [N, K] int8 · scale [N])ᵀ -> [..., N] in x.dtype."""
    rows = x.numel() // max(x.shape[-1], 1)
    if use_triton(x.device) and x.dtype in _TRITON_DTYPES and rows <= TRITON_MAX_M:
        return w8a16_linear_triton(x, q, scale)
    return w8a16_linear_ref(x, q, scale)


def moe_experts_int8(
    x: torch.Tensor,  # [T, hidden]
    weights: torch.Tensor,  # [T, k] routing weights (model dtype)
    ids: torch.Tensor,  # [T, k] expert ids
    w13: torch.Tensor,  # [E, 2I, hidden] int8: w1 rows then w3 rows
    w2: torch.Tensor,  # [E, hidden, I] int8
    w13_scale: torch.Tensor,  # [E, 2I] fp32
    w2_scale: torch.Tensor,  # [E, hidden] fp32
) -> torch.Tensor:
    """`kernels.moe_experts` with int8 experts: Σ_k weights[:, k] · w2(silu(w1 x) ⊙ w3 x) -> [T, hidden].
    Dispatch: the grouped Triton kernels while experts get few rows (decode: weight-bandwidth bound, no host
    sync; moe_triton's bf16 kernels with int8 weight tiles); per-expert GEMMs otherwise (prefill: compute
    bound, cuBLAS through `w8a16_linear`), the same split as moe_triton.experts."""
    if (use_triton(x.device) and x.dtype in _TRITON_DTYPES and x.shape[0]
            and ids.numel() < moe_triton.GROUPED_MM_MIN_ROWS_PER_EXPERT * w13.shape[0]
            and moe_triton.supported(w13.shape[2], w2.shape[2])):
        if x.shape[0] <= moe_decode.MAX_TOKENS:  # no sort: per-token GEMVs (kernels/moe_decode.py)
            return moe_decode.gemv_experts(x, weights, ids, w13, w2, w13_scale, w2_scale)
        return moe_triton.triton_experts(x, weights, ids, w13, w2, w13_scale=w13_scale, w2_scale=w2_scale)
    return moe_experts_int8_torch(x, weights, ids, w13, w2, w13_scale, w2_scale)


def moe_experts_int8_torch(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w13: torch.Tensor,
                           w2: torch.Tensor, w13_scale: torch.Tensor, w2_scale: torch.Tensor) -> torch.Tensor:
    """Per-expert w8a16 GEMMs, arguments as `moe_experts_int8` (the CPU path, prefill on the GPU, and the
    oracle of the grouped kernels).
    Assignments are sorted by expert once (one host sync for the counts), so each active expert costs two
    GEMMs on a contiguous slice of the gathered rows plus the SwiGLU. Returns [T, hidden] in x.dtype."""
    k = ids.shape[1]
    flat_ids = ids.reshape(-1)  # [T·k]
    order = torch.argsort(flat_ids, stable=True)  # assignments grouped by expert
    counts = torch.bincount(flat_ids, minlength=w13.shape[0]).tolist()  # [E]
    tok = order // k  # token of each sorted assignment
    xs = x[tok]  # [T·k, hidden]
    ys = torch.empty_like(xs)
    lo = 0
    for e, n in enumerate(counts):
        if n:
            h = w8a16_linear(xs[lo:lo + n], w13[e], w13_scale[e])  # [n, 2I]
            ys[lo:lo + n] = w8a16_linear(silu_mul_ref(h), w2[e], w2_scale[e])  # [n, hidden]
        lo += n
    out = torch.zeros_like(x)
    return out.index_add_(0, tok, ys * weights.reshape(-1)[order, None])
