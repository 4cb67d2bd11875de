"""The persistent TMA experts (kernels/moe_tma_triton.py) against the torch reference, and their row invariance.

CPU: tiny shapes under Triton's interpreter (tests/triton_harness.py), through descriptors where the interpreter
has them and through pointer loads (the same tiles, the same K loop). GPU: the model's shape (32 experts,
6144 -> 9216, top-2, bf16) at 4096 tokens.

Tolerance as in tests/test_kernels.py: bf16 inputs, a kernel passes when its error against the fp64 (CPU) or
fp32 (GPU, the fp64 loop is too slow at that size) oracle is ≤ 2× the bf16 torch reference's own error + 1e-4.
Row invariance is bitwise: a row computed among n rows equals the same row computed among more.
"""

from __future__ import annotations

import pytest
import torch

from triton_harness import CUDA, DEV, only_where_kernels_run, rel, relaunch_test, triton_backend  # noqa: F401

pytest.importorskip("triton")

import minimax01.kernels as kernels  # noqa: E402
from minimax01.kernels import dispatch, moe_tma_triton  # noqa: E402
from minimax01.kernels import moe_prefill_choice as choice  # noqa: E402
from minimax01.kernels.moe_ref import experts_ref, route_ref  # noqa: E402

BF16_FACTOR = 2
E, HIDDEN, INTER = 4, 64, 96
# Several row blocks per expert and small column tiles: the tile walk inside an expert, GROUP_M groups.
SMALL = dict(BM=16, BN_UP=32, BN_DOWN=32, BK=32, GROUP_M=2, num_warps=4, num_stages=2, tma=True)

test_relaunch_under_interpreter = relaunch_test(__file__)


def inputs(t: int, seed: int, experts: tuple[int, ...] = tuple(range(E))) -> tuple[torch.Tensor, ...]:
    """bf16 (x, weights, ids, w13, w2); tokens routed only to `experts`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, HIDDEN, generator=g)
    w13 = torch.randn(E, 2 * INTER, HIDDEN, generator=g) / HIDDEN**0.5
    w2 = torch.randn(E, HIDDEN, INTER, generator=g) / INTER**0.5
    logits = torch.randn(t, E, generator=g)
    logits[:, [e for e in range(E) if e not in experts]] = -torch.inf
    w, ids = route_ref(logits, 2, torch.bfloat16)
    return tuple(a.to(DEV) for a in (x.bfloat16(), w, ids, w13.bfloat16(), w2.bfloat16()))


def tolerance(x, w, ids, w13, w2) -> tuple[torch.Tensor, float]:  # noqa: ANN001
    ref64 = experts_ref(*[a.double() if a.is_floating_point() else a for a in (x, w, ids, w13, w2)])
    return ref64, BF16_FACTOR * rel(experts_ref(x, w, ids, w13, w2), ref64) + 1e-4


@pytest.mark.parametrize("tma", [True, False])
@pytest.mark.parametrize("tokens, experts", [
    (40, (0, 1, 2, 3)),
    (40, (0, 2, 3)),  # expert 1 gets no tokens
    (3, (0, 1, 2, 3)),  # fewer rows than a block
])
def test_matches_reference(tokens: int, experts: tuple[int, ...], tma: bool) -> None:
    x, w, ids, w13, w2 = inputs(tokens, seed=tokens + len(experts), experts=experts)
    ref64, tol = tolerance(x, w, ids, w13, w2)
    for cfg in (moe_tma_triton.config_for(HIDDEN, INTER), SMALL):
        out = moe_tma_triton.tma_experts(x, w, ids, w13, w2, dict(cfg, tma=tma))
        assert rel(out, ref64) <= tol, (cfg, rel(out, ref64), tol)


def test_rows_invariant() -> None:
    """The first n rows of a 40-token batch are computed bitwise alike on their own (same routing)."""
    x, w, ids, w13, w2 = inputs(40, seed=3)
    for cfg in (moe_tma_triton.config_for(HIDDEN, INTER), SMALL):
        full = moe_tma_triton.tma_experts(x, w, ids, w13, w2, cfg)
        for n in (1, 7, 23):
            assert torch.equal(moe_tma_triton.tma_experts(x[:n], w[:n], ids[:n], w13, w2, cfg), full[:n]), (cfg, n)


def test_config_divides_the_shape() -> None:
    for hidden, inter in ((64, 96), (6144, 9216), (1024, 512)):
        cfg = moe_tma_triton.config_for(hidden, inter)
        assert inter % cfg["BN_UP"] == hidden % cfg["BN_DOWN"] == hidden % cfg["BK"] == inter % cfg["BK"] == 0
    assert moe_tma_triton.config_for(6144, 9216) == moe_tma_triton.DEFAULT


def test_prefill_step_runs_the_measured_choice(monkeypatch: pytest.MonkeyPatch, triton_backend: None) -> None:
    """A MEASURED entry naming grouped_tma routes every prefill step's experts there."""
    x, w, ids, w13, w2 = inputs(40, seed=5)
    name = torch.cuda.get_device_name(DEV) if CUDA else "cpu"
    monkeypatch.setitem(choice.MEASURED, (name, E, HIDDEN, INTER, 2), "grouped_tma")
    with kernels.step_kind(prefill=True):
        assert {dispatch.select("moe_experts", x[:t], ids[:t], w13, w2) for t in (1, 2, 40)} == {"grouped_tma"}
        out = kernels.moe_experts(x, w, ids, w13, w2)
    assert torch.equal(out, moe_tma_triton.tma_experts(x, w, ids, w13, w2))


# ------------------------------------------------------------------ the model's shape on a GPU


@pytest.fixture(scope="module")
def real_shape() -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(0)
    e, h, i = 32, 6144, 9216
    w13 = torch.randn(e, 2 * i, h, device="cuda", generator=g, dtype=torch.bfloat16) * h**-0.5
    w2 = torch.randn(e, h, i, device="cuda", generator=g, dtype=torch.bfloat16) * i**-0.5
    x = torch.randn(4096, h, device="cuda", generator=g, dtype=torch.bfloat16)
    gate = torch.randn(e, h, device="cuda", generator=g, dtype=torch.bfloat16) * h**-0.5
    w, ids = route_ref(x @ gate.t(), 2, torch.bfloat16)
    return x, w, ids, w13, w2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_real_shape_matches_reference(real_shape: tuple[torch.Tensor, ...]) -> None:
    x, w, ids, w13, w2 = real_shape
    with torch.inference_mode():
        ref32 = experts_ref(x.float(), w.float(), ids, w13.float(), w2.float())
        tol = BF16_FACTOR * rel(experts_ref(x, w, ids, w13, w2), ref32) + 1e-4
        err = rel(moe_tma_triton.tma_experts(x, w, ids, w13, w2), ref32)
        assert err <= tol, (err, tol)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_real_shape_rows_invariant(real_shape: tuple[torch.Tensor, ...]) -> None:
    x, w, ids, w13, w2 = real_shape
    with torch.inference_mode():
        full = moe_tma_triton.tma_experts(x, w, ids, w13, w2)
        for n in (1000, 1):
            assert torch.equal(moe_tma_triton.tma_experts(x[:n], w[:n], ids[:n], w13, w2), full[:n]), n
