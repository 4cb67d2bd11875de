"""The int8 weight-only Triton kernels (kernels/w8a16_triton.py: the dense w8a16 GEMM; kernels/moe_triton.py with its
int8 flag: the grouped experts) against the torch references on the same int8 weights. Runs under
TRITON_INTERPRET=1 on CPU (tests/triton_harness.py says how), compiled on CUDA."""

from __future__ import annotations

import pytest
import torch

from triton_harness import DEV, only_where_kernels_run, relaunch_test, triton_backend  # noqa: F401

pytest.importorskip("triton")

from minimax01.kernels import moe_experts_int8  # noqa: E402
from minimax01.kernels.dispatch import GEMV_MAX_TOKENS, W8A16_TRITON_MAX_M  # noqa: E402
from minimax01.kernels.moe_ref import experts_ref  # noqa: E402
from minimax01.kernels.w8a16_ref import dequantize, w8a16_linear_ref  # noqa: E402
from minimax01.quant import Int8Linear, quantize_weight  # noqa: E402

test_relaunch_under_interpreter = relaunch_test(__file__)


def on_dev(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(DEV) for t in tensors)


# The only error left is the output's rounding to nearest, at most half an ulp (2^-8 relative for bf16, 2^-11
# for fp16) per element, so also in norm; fp32 accumulation-order differences are 1e-6 of that.
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2 ** -8), (torch.float16, 2 ** -11)])
@pytest.mark.parametrize("M,N,K", [(1, 48, 80), (5, 64, 128), (17, 40, 96), (64, 32, 64)])
def test_w8a16_matches_reference(triton_backend: None, dtype: torch.dtype, tol: float, M: int, N: int,
                                 K: int) -> None:
    from minimax01.kernels.w8a16_triton import w8a16_linear_triton

    g = torch.Generator().manual_seed(M * N + K)
    x = torch.randn(M, K, generator=g).to(dtype)
    q, scale = quantize_weight(torch.randn(N, K, generator=g))
    x, q, scale = on_dev(x, q, scale)
    y = w8a16_linear_triton(x, q, scale)
    ref = w8a16_linear_ref(x.double(), q, scale.double())  # exact products of the same int8/bf16 inputs
    assert y.dtype == dtype and bool(torch.isfinite(y).all())
    assert float((y.double() - ref).norm() / ref.norm()) < tol


def test_dispatch(triton_backend: None) -> None:
    g = torch.Generator().manual_seed(5)
    w, s = on_dev(*quantize_weight(torch.randn(24, 32, generator=g)))
    lin = Int8Linear(w, s)
    x = torch.randn(3, 32, generator=g).bfloat16().to(DEV)
    torch.testing.assert_close(lin(x), w8a16_linear_ref(x, lin.weight, lin.weight_scale), rtol=2e-2, atol=2e-2)
    big = torch.randn(W8A16_TRITON_MAX_M + 1, 32, generator=g).bfloat16().to(DEV)  # above the kernel's rows: torch
    torch.testing.assert_close(lin(big), w8a16_linear_ref(big, lin.weight, lin.weight_scale), rtol=0, atol=0)


@pytest.mark.parametrize("T", [1, 6, 40])
def test_grouped_moe(triton_backend: None, T: int) -> None:
    from minimax01.kernels.moe_triton import triton_experts

    g = torch.Generator().manual_seed(T)
    E, H, inter = 4, 32, 48  # inter not a multiple of the column tile: masked columns
    w13, s13 = quantize_weight(torch.randn(E, 2 * inter, H, generator=g) / H ** 0.5)
    w2, s2 = quantize_weight(torch.randn(E, H, inter, generator=g) / inter ** 0.5)
    ids = torch.stack([torch.randperm(E - 1, generator=g)[:2] for _ in range(T)])  # expert E-1 gets no rows
    weights = torch.rand(T, 2, generator=g).bfloat16()
    x = torch.randn(T, H, generator=g).bfloat16()
    w13, s13, w2, s2, ids, weights, x = on_dev(w13, s13, w2, s2, ids, weights, x)
    out = triton_experts(x, weights, ids, w13, w2, w13_scale=s13, w2_scale=s2)
    if T > GEMV_MAX_TOKENS:  # the dispatch picks the grouped kernels (below: the GEMVs, test_moe_decode)
        torch.testing.assert_close(moe_experts_int8(x, weights, ids, w13, w2, s13, s2), out, rtol=0, atol=0)
    ref = experts_ref(x.double(), weights.double(), ids, dequantize(w13, s13, torch.float64),
                      dequantize(w2, s2, torch.float64))
    # bf16 roundings of the SwiGLU activation and of each expert's output (2^-8 each, relative) then the sum;
    # a scale of the wrong row or expert is off by the spread of the rows' absmax (~20 %), far above 1e-2.
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-2
    # Narrow column tiles (3 blocks of the 48 w1/w3 columns, 2 of the 32 w2 rows): each block must read the
    # scales of its own columns, and w3's start I rows after w1's.
    narrow = dict(BM=16, BN=16, BK=32, GROUP_M=2, num_warps=4, num_stages=1)
    out = triton_experts(x, weights, ids, w13, w2, narrow, w13_scale=s13, w2_scale=s2)
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-2
    with pytest.raises(ValueError, match="both"):
        triton_experts(x, weights, ids, w13, w2, w13_scale=s13)
