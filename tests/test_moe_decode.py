"""The few-token MoE path (kernels/moe_decode.py): fused routing and per-token expert GEMVs against their torch
twins (kernels.moe_ref.route_ref, kernels.moe_ref.experts_ref). Runs under TRITON_INTERPRET=1 on CPU (see
tests/triton_harness.py), compiled on CUDA.

Tolerances: routing — the same experts (in either order where bf16 logits tie) and the weights equal to fp32
rounding (the same softmax and renormalisation in another order: 1e-6), or to one rounding of the output
dtype (bf16: 2^-8 relative). Experts — fp32: the same sums in another order (1e-5; 5e-3 on CUDA, whose fp32
products may differ in fused multiply-adds and where the grouped tests use tf32); bf16: the kernel rounds the
activation once and the output once, the bf16 torch reference rounds after every op, so the kernel passes at
≤ 2× the reference's own error against fp64 (a wrong expert, weight or column is an O(1) error).
"""

from __future__ import annotations

import pytest
import torch

from triton_harness import CUDA, DEV, only_where_kernels_run, rel, relaunch_test, triton_backend  # noqa: F401

pytest.importorskip("triton")

import minimax01.kernels as kernels  # noqa: E402
from minimax01.kernels import moe_decode  # noqa: E402
from minimax01.kernels.moe_ref import experts_ref  # noqa: E402
from minimax01.kernels.moe_ref import route_ref as route  # noqa: E402  (the torch twin)

# CPU (Triton interpreter, whose cost grows with the number of tiles): both multiples of 16 (the kernels' K
# tile); hidden 48 = three K tiles, and a tail for block_n 32 in the down projection.
HIDDEN, INTER, EXPERTS = (1024, 768, 32) if CUDA else (48, 48, 6)
FP32_TOL = 5e-3 if CUDA else 1e-5

test_relaunch_under_interpreter = relaunch_test(__file__)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("experts,top_k", [(6, 2), (32, 2), (5, 3)])
def test_route_matches_torch(dtype: torch.dtype, experts: int, top_k: int) -> None:
    g = torch.Generator().manual_seed(experts + top_k)
    logits = (torch.randn(7, experts, generator=g) * 3).to(dtype).to(DEV)
    w_ref, ids_ref = route(logits, top_k, dtype)
    w, ids = moe_decode.route(logits, top_k, dtype)
    assert w.dtype == dtype and ids.dtype == torch.int64
    assert (w[:, :-1] >= w[:, 1:]).all()  # descending, as torch.topk

    def dense(weights: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        # [T, E] routing matrix: equal logits (bf16 ties) may come in either order, the mixture is the same
        return torch.zeros(logits.shape, dtype=torch.float32, device=DEV).scatter_(1, picks, weights.float())

    tol = 1e-6 if dtype == torch.float32 else 2**-8
    assert torch.equal(dense(torch.ones_like(w), ids) > 0, dense(torch.ones_like(w_ref), ids_ref) > 0)
    assert torch.allclose(dense(w, ids), dense(w_ref, ids_ref), rtol=tol, atol=0)


def expert_case(t: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, HIDDEN, generator=g)
    w13 = torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=g) / HIDDEN**0.5
    w2 = torch.randn(EXPERTS, HIDDEN, INTER, generator=g) / INTER**0.5
    logits = torch.randn(t, EXPERTS, generator=g)
    if t > 1:
        logits[1] = logits[0]  # two tokens pick the same experts: each streams them on its own
    w, ids = route(logits, 2, dtype)
    return tuple(a.to(DEV) for a in (x.to(dtype), w, ids, w13.to(dtype), w2.to(dtype)))


@pytest.mark.parametrize("tokens", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_experts_match_reference(tokens: int, dtype: torch.dtype) -> None:
    x, w, ids, w13, w2 = expert_case(tokens, dtype, seed=tokens)
    ref64 = experts_ref(*[a.double() if a.is_floating_point() else a for a in (x, w, ids, w13, w2)])
    tol = FP32_TOL if dtype == torch.float32 else 2 * rel(experts_ref(x, w, ids, w13, w2), ref64)
    for block_n, block_k in ((16, 512), (32, 16), (8, 64)):  # tails in N, several K steps
        out = moe_decode.gemv_experts(x, w, ids, w13, w2, block_n=block_n, block_k=block_k)
        assert out.dtype == dtype and rel(out, ref64) <= tol, (block_n, block_k)
    # Another expert is caught.
    assert rel(moe_decode.gemv_experts(x, w, (ids + 1) % EXPERTS, w13, w2), ref64) > 10 * tol


@pytest.mark.parametrize("tokens", [1, 2, 9])
def test_dispatch_takes_the_gemv_path_for_few_tokens(tokens: int, triton_backend: None) -> None:
    """kernels.moe_experts on 16-bit weights equals the reference whichever path the token count selects."""
    x, w, ids, w13, w2 = expert_case(tokens, torch.bfloat16, seed=10 + tokens)
    ref64 = experts_ref(*[a.double() if a.is_floating_point() else a for a in (x, w, ids, w13, w2)])
    assert rel(kernels.moe_experts(x, w, ids, w13, w2), ref64) <= 2 * rel(experts_ref(x, w, ids, w13, w2), ref64)


@pytest.mark.parametrize("tokens", [1, 2])
def test_int8_gemv_experts_match_dequantized_reference(tokens: int, triton_backend: None) -> None:
    """int8 experts (quant.py's per-row scales) through the GEMVs == experts_ref on the dequantized weights in
    fp64, to the kernel's two bf16 roundings (activation, output: 2^-8 relative each); a scale applied to the
    wrong row or expert moves the result by the spread of the rows' absmax (~20 %)."""
    from minimax01.kernels.w8a16_ref import dequantize
    from minimax01.quant import quantize_weight

    x, w, ids, w13, w2 = expert_case(tokens, torch.bfloat16, seed=20 + tokens)
    (q13, s13), (q2, s2) = quantize_weight(w13.float().cpu()), quantize_weight(w2.float().cpu())
    q13, s13, q2, s2 = (t.to(DEV) for t in (q13, s13, q2, s2))
    ref = experts_ref(x.double(), w.double(), ids, dequantize(q13, s13, torch.float64),
                      dequantize(q2, s2, torch.float64))
    out = kernels.moe_experts_int8(x, w, ids, q13, q2, s13, s2)  # the dispatch takes the GEMVs at <= 2 tokens
    torch.testing.assert_close(out, moe_decode.gemv_experts(x, w, ids, q13, q2, s13, s2), rtol=0, atol=0)
    assert rel(out, ref) <= 1e-2
    assert rel(moe_decode.gemv_experts(x, w, ids, q13, q2, s13.flip(1), s2), ref) > 5e-2
    with pytest.raises(ValueError, match="both"):
        moe_decode.gemv_experts(x, w, ids, q13, q2, s13)
