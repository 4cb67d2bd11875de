"""The row-invariant GEMM of prefill steps (kernels/linear_triton.py): equal to F.linear within bf16 rounding,
each row bitwise independent of the row count, and the dispatch that sends prefill steps on a GPU to it."""

from __future__ import annotations

import pytest
import torch
from triton_harness import CUDA as GPU
from triton_harness import DEV, only_where_kernels_run, relaunch_test  # noqa: F401

pytest.importorskip("triton")
import minimax01.kernels as kernels  # noqa: E402
from minimax01.kernels import dispatch, linear_triton  # noqa: E402

test_relaunch_under_interpreter = relaunch_test(__file__)

@pytest.mark.parametrize("n,k", [(32, 128), (96, 200), (300, 64)])  # narrow, K not a multiple of 64, wide
def test_matches_torch(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(70, k, generator=g).to(DEV, torch.bfloat16)
    w = (torch.randn(n, k, generator=g) * k**-0.5).to(DEV, torch.bfloat16)
    ref = x.double() @ w.double().t()
    got = linear_triton.linear(x, w).double()
    # fp32 sums of bf16 products, one bf16 rounding of the result: within 2^-8 of |ref|'s scale.
    assert (got - ref).abs().max() <= 2**-8 * ref.abs().max()


def test_rows_do_not_depend_on_the_row_count() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(150, 192, generator=g).to(DEV, torch.bfloat16)
    w = torch.randn(40, 192, generator=g).to(DEV, torch.bfloat16)
    full = linear_triton.linear(x, w)
    for m in (1, 3, 65, 149):
        assert torch.equal(linear_triton.linear(x[:m], w), full[:m])


def test_dispatch_prefill_steps_on_a_gpu_only() -> None:
    x = torch.zeros(5, 64, dtype=torch.bfloat16)
    w = torch.zeros(8, 64, dtype=torch.bfloat16)
    with kernels.use_backend("triton"), kernels.step_kind(prefill=True):
        assert dispatch.select("linear", x, w) == "torch"  # a CPU tensor: cuBLAS's twin, the torch path
    if GPU:
        xc, wc = x.cuda(), w.cuda()
        with kernels.step_kind(prefill=True):
            assert dispatch.select("linear", xc, wc) == "triton"
            assert dispatch.select("linear", xc.float(), wc.float()) == "torch"  # fp32: tests' precision path
        with kernels.step_kind(prefill=False):
            assert dispatch.select("linear", xc, wc) == "torch"
        assert dispatch.select("linear", xc, wc) == "torch"


# Every dense projection of Text-01 whole and as one rank's shard at TP = 2 and 8: (out, in).
SHAPES = [(32, 6144), (1024, 6144), (8192, 6144), (24576, 6144), (6144, 8192),  # router, k/v, q, qkv, out
          (512, 6144), (4096, 6144), (12288, 6144), (6144, 4096),  # TP = 2
          (128, 6144), (3072, 6144), (6144, 1024)]  # TP = 8


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("n,k", SHAPES)
def test_model_projections_row_invariant_on_gpu(n: int, k: int) -> None:
    """What prefix caching needs, checked at the model's shapes through the op the model calls."""
    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(3000, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) * k**-0.5
    with kernels.step_kind(prefill=True):
        full = kernels.linear(x, w)
        for m in (1, 3, 200, 1000):
            assert torch.equal(kernels.linear(x[:m], w), full[:m]), m
