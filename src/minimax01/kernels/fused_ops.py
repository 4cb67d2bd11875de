"""Fused small ops: RMSNorm, RMSNorm + sigmoid output gate, partial RoPE on q and k in one launch, SiLU·mul.
Each replaces a chain of torch element-wise kernels that read and write the whole activation every step; the
torch twins (the oracles in tests and the path off CUDA) are `norm_ref.rms_norm` / `rms_norm_gate`,
`attention_ref.rope_ref_` (`apply_partial_rope` on q and k) and `moe_ref.silu_mul_ref`.

Numerics: every kernel rounds where its twin rounds, so bf16 results agree bit for bit up to the last fp32
ulp of exp / rsqrt / cos and of the order of the sum of squares (a rare 1-ulp bf16 difference):
- statistics, RoPE angles and products in fp32, as the original model computes them; each intermediate that
  torch stores in the activation dtype (normed x, weight·normed, sigmoid, silu) is rounded to it here too
  (`_round`);
- divisions are IEEE (div_rn) like torch's CUDA kernels, and the launches disable fp fusion so that
  `a·b + c·d` stays two rounded products and a rounded sum, as torch's separate mul / add kernels compute it.
None of the wrappers reads a device value on the host: they run inside CUDA-graph capture. (Triton skips
launches of an empty grid: T = 0 needs no special case.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minimax01.kernels.triton_common import cast, interpreting

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_NORM_WIDTH = 32768  # a whole row per program, in registers: 64 fp32 values per thread at 16 warps
# Programs cover blocks of rows (tokens) of about this many elements: one row of Text-01's 6144 / 8192 wide
# norms, several of narrower ones. Also what keeps the CPU interpreter (tests) fast: it runs each program in
# Python, vectorised over the program's block only.
_BLOCK_ELEMS = 4096
_ROPE_HEADS = 8  # heads per RoPE program: the 8 kv heads of Text-01 fill one block, its 64 query heads eight
_ROPE_ELEMS = 1024  # tokens x heads x rotary_dim/2 per RoPE program (4 tokens at Text-01's dims)
_SILU_COLS = 1024


def supported(*tensors: torch.Tensor, width: int | None = None) -> bool:
    """Whether the kernels take these operands: one dtype for all, fp32 / bf16 / fp16 (fp64 is the tests'
    oracle dtype and mixed dtypes need torch's type promotion: both stay on the reference), a contiguous last
    dim, and for the norms a row of at most MAX_NORM_WIDTH."""
    dtype = tensors[0].dtype
    return (dtype in _DTYPES and all(t.dtype == dtype and t.stride(-1) == 1 for t in tensors)
            and (width is None or width <= MAX_NORM_WIDTH))


@triton.jit
def _round(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 x rounded to `dtype` and widened back: the value a torch op with a `dtype` result stores."""
    return cast(x, dtype, INTERPRET).to(tl.float32)


@triton.jit
def _row_block(T, N, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """This program's rows [ROWS] (int64: T · N passes 2^31 at long prefill), columns [BLOCK] and their mask."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    return rows, cols, (rows < T)[:, None] & (cols < N)[None, :]


@triton.jit
def _rms_norm_rows(x_ptr, w_ptr, rows, cols, mask, stride_x, N, inv_n, eps, INTERPRET: tl.constexpr):
    """weight · (x / rms(x)) of a block of rows, rounded like norm_ref.rms_norm: fp32 statistics, the
    normalised value rounded to x's dtype, then the product with the weight rounded again. fp32 [ROWS, BLOCK].
    The mean is sum · (1/N), as torch's CUDA mean computes it."""
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) * inv_n + eps)
    normed = _round(x * rstd[:, None], dtype, INTERPRET)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    return _round(w[None, :] * normed, dtype, INTERPRET)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, T, N, stride_x, stride_o, inv_n, eps,
                     ROWS: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    rows, cols, mask = _row_block(T, N, ROWS, BLOCK)
    y = _rms_norm_rows(x_ptr, w_ptr, rows, cols, mask, stride_x, N, inv_n, eps, INTERPRET)
    tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_gate_kernel(x_ptr, g_ptr, w_ptr, out_ptr, T, N, stride_x, stride_g, stride_o, inv_n, eps,
                          ROWS: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    rows, cols, mask = _row_block(T, N, ROWS, BLOCK)
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    y = _rms_norm_rows(x_ptr, w_ptr, rows, cols, mask, stride_x, N, inv_n, eps, INTERPRET)
    g = tl.load(g_ptr + rows[:, None] * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    gate = _round(tl.math.div_rn(1.0, 1.0 + tl.exp(-g)), dtype, INTERPRET)  # torch.sigmoid's formula
    tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], cast(gate * y, dtype, INTERPRET), mask=mask)


@triton.jit
def _rope_heads(ptr, toks, stride_t, stride_h, h0, T, heads, cos, sin,
                HALF: tl.constexpr, HALF_P: tl.constexpr, HB: tl.constexpr, INTERPRET: tl.constexpr):
    """Rotates heads h0..h0+HB of the tokens `toks` [BT] in place: pairs (i, i + HALF) of the first 2·HALF
    dims. cos, sin: fp32 [BT, 1, HALF_P]."""
    offs_h = h0 + tl.arange(0, HB)
    offs_i = tl.arange(0, HALF_P)
    mask = ((toks < T)[:, None, None] & (offs_h < heads)[None, :, None]) & (offs_i < HALF)[None, None, :]
    lo = ptr + toks[:, None, None] * stride_t + offs_h[None, :, None] * stride_h + offs_i[None, None, :]
    hi = lo + HALF  # [BT, HB, HALF_P] pointers of the second half of each pair
    x1 = tl.load(lo, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(hi, mask=mask, other=0.0).to(tl.float32)
    # The twin's x·cos + rotate_half(x)·sin with rotate_half(x) = (−x2, x1): negation is exact.
    tl.store(lo, cast(x1 * cos - x2 * sin, ptr.dtype.element_ty, INTERPRET), mask=mask)
    tl.store(hi, cast(x2 * cos + x1 * sin, ptr.dtype.element_ty, INTERPRET), mask=mask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, pos_ptr, inv_ptr, T, H, KVH, stride_qt, stride_qh, stride_kt, stride_kh,
                 HALF: tl.constexpr, HALF_P: tl.constexpr, BT: tl.constexpr, HB: tl.constexpr,
                 INTERPRET: tl.constexpr):
    # grid (cdiv(T, BT), cdiv(H, HB) + cdiv(KVH, HB)): the first head blocks are q's, the rest k's.
    toks = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    hb = tl.program_id(1)
    offs_i = tl.arange(0, HALF_P)
    pos = tl.load(pos_ptr + toks, mask=toks < T, other=0).to(tl.float32)
    freqs = pos[:, None] * tl.load(inv_ptr + offs_i, mask=offs_i < HALF, other=0.0)[None, :]  # [BT, HALF_P]
    cos = tl.cos(freqs)[:, None, :]
    sin = tl.sin(freqs)[:, None, :]
    q_blocks = tl.cdiv(H, HB)
    if hb < q_blocks:
        _rope_heads(q_ptr, toks, stride_qt, stride_qh, hb * HB, T, H, cos, sin, HALF, HALF_P, HB, INTERPRET)
    else:
        _rope_heads(k_ptr, toks, stride_kt, stride_kh, (hb - q_blocks) * HB, T, KVH, cos, sin, HALF, HALF_P, HB,
                    INTERPRET)


@triton.jit
def _silu_mul_kernel(h_ptr, out_ptr, T, I, stride_h, stride_o,
                     ROWS: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (rows < T)[:, None] & (cols < I)[None, :]
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    a_ptrs = h_ptr + rows[:, None] * stride_h + cols[None, :]  # [ROWS, BLOCK] of w1 x; w3 x sits I further
    a = tl.load(a_ptrs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(a_ptrs + I, mask=mask, other=0.0).to(tl.float32)
    act = _round(tl.math.div_rn(a, 1.0 + tl.exp(-a)), dtype, INTERPRET)  # F.silu's formula, rounded like it
    tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], cast(act * b, dtype, INTERPRET), mask=mask)


def _launch(block: int, rows: int) -> dict:
    """Launch options of a [rows, block] program: about 16 values per thread, 1 to 16 warps, and no fp
    contraction (the twins' products and sums are separate torch ops, each rounded)."""
    return dict(num_warps=min(16, max(1, rows * block // 512)), enable_fp_fusion=False, INTERPRET=interpreting())


def _norm_grid(T: int, n: int) -> tuple[tuple[int], dict]:
    block = triton.next_power_of_2(n)
    rows = max(1, _BLOCK_ELEMS // block)
    return (triton.cdiv(T, rows),), dict(ROWS=rows, BLOCK=block, **_launch(block, rows))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., N], weight [N] -> [..., N]: norm_ref.rms_norm in one pass."""
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    out = torch.empty_like(rows)
    grid, opts = _norm_grid(rows.shape[0], n)
    _rms_norm_kernel[grid](rows, weight, out, rows.shape[0], n, rows.stride(0), out.stride(0), 1.0 / n, eps,
                           **opts)
    return out.view(x.shape)


def rms_norm_gate(x: torch.Tensor, gate_logits: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x, gate_logits [T, N], weight [N] -> sigmoid(gate_logits) · rms_norm(x) [T, N] in one pass."""
    T, n = x.shape
    out = torch.empty_like(x)
    grid, opts = _norm_grid(T, n)
    _rms_norm_gate_kernel[grid](x, gate_logits, weight, out, T, n, x.stride(0), gate_logits.stride(0),
                                out.stride(0), 1.0 / n, eps, **opts)
    return out


def rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> None:
    """Rotates the first rotary_dim = 2·len(inv_freq) dims of q [T, H, D] and k [T, KVH, D] in place, both in
    one launch; positions [T] (integer, on q's device), inv_freq fp32. The other dims are not touched."""
    half = inv_freq.numel()
    if inv_freq.dtype != torch.float32 or 2 * half > q.shape[-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError("RoPE needs fp32 inv_freq of at most head_dim / 2 frequencies and equal head dims")
    T, H, _ = q.shape
    kvh = k.shape[1]
    half_p = triton.next_power_of_2(half)
    hb = min(_ROPE_HEADS, triton.next_power_of_2(max(H, kvh)))
    bt = max(1, _ROPE_ELEMS // (hb * half_p))
    grid = (triton.cdiv(T, bt), triton.cdiv(H, hb) + triton.cdiv(kvh, hb))
    _rope_kernel[grid](q, k, positions, inv_freq, T, H, kvh, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                       HALF=half, HALF_P=half_p, BT=bt, HB=hb, **_launch(half_p, bt * hb))


def silu_mul(h: torch.Tensor) -> torch.Tensor:
    """h [T, 2I] = [w1 x | w3 x] -> silu(h[:, :I]) · h[:, I:] [T, I]."""
    T, two_i = h.shape
    inter = two_i // 2
    out = torch.empty(T, inter, dtype=h.dtype, device=h.device)
    block = min(_SILU_COLS, triton.next_power_of_2(inter))
    rows = max(1, _BLOCK_ELEMS // block)
    _silu_mul_kernel[(triton.cdiv(T, rows), triton.cdiv(inter, block))](
        h, out, T, inter, h.stride(0), out.stride(0), ROWS=rows, BLOCK=block, **_launch(block, rows))
    return out
