"""Fused small-op kernels (kernels/fused_ops.py) against their torch twins: norm_ref.rms_norm / rms_norm_gate,
attention_ref.apply_partial_rope, moe_ref.silu_mul_ref.

Runs under TRITON_INTERPRET=1 on CPU (re-running itself in a subprocess when triton was imported before the
variable could be set, tests/triton_harness.py), compiled on CUDA at Text-01's widths. Skipped where Triton
cannot be imported.

Tolerances. The kernels round where the twins round (fp32 math, the same intermediate casts), so:
- fp32: only the last ulp of exp / rsqrt / cos and the order of the sum of squares differ: ‖err‖/‖ref‖ ≤ 1e-6
  (one fp32 ulp is 6e-8 relative).
- bf16: such an fp32-ulp difference before a rounding to bf16 flips it by one bf16 ulp in a rare element
  (probability ~2^-15 per rounding); carried through one more rounded product (the weight, the gate) that is
  at most 2 ulps of the result, i.e. |err| ≤ 2^-6·|ref| (a bf16 ulp is ≤ 2^-7 relative). And ≥ 99 % of the
  elements must be bit-identical: a kernel that skipped one of the twin's intermediate roundings would differ
  in a large fraction of them while staying within 2 ulps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

from triton_harness import (  # noqa: F401
    CUDA,
    DEV,
    only_where_kernels_run,
    prefill_decode_logits,
    rel,
    relaunch_test,
    triton_backend,
)

pytest.importorskip("triton")

import minimax01.kernels as kernels  # noqa: E402
from minimax01.kernels import fused_ops  # noqa: E402
from minimax01.kernels.attention_ref import apply_partial_rope  # noqa: E402
from minimax01.kernels.moe_ref import silu_mul_ref  # noqa: E402
from minimax01.kernels.norm_ref import rms_norm, rms_norm_gate  # noqa: E402
from minimax01.model.attention import rope_inv_freq  # noqa: E402

# Non-power-of-two widths everywhere; on the GPU Text-01's: hidden 6144, lightning inner 8192, 64 q / 8 kv
# heads of 128 with RoPE on 64 dims, expert intermediate 9216.
TOKENS = 37
NORM_WIDTHS = (6144, 8192, 200) if CUDA else (200, 1000)
HEADS, KV_HEADS, HEAD_DIM, ROTARY_DIM = (64, 8, 128, 64) if CUDA else (12, 3, 24, 12)
INTER = 9216 if CUDA else 1100
FP32_TOL = 1e-6
DTYPES = [torch.float32, torch.bfloat16]

test_relaunch_under_interpreter = relaunch_test(__file__)


def randn(*shape: int, seed: int, dtype: torch.dtype, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).to(DEV)


@contextmanager
def no_host_sync() -> Iterator[None]:
    """On CUDA, any device -> host synchronisation inside raises (the ops run under CUDA-graph capture)."""
    if not CUDA:
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def assert_matches_twin(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if ref.dtype == torch.float32:
        assert rel(out, ref) <= FP32_TOL, rel(out, ref)
        return
    diff = (out.double() - ref.double()).abs()
    assert (diff <= 2**-6 * ref.double().abs()).all(), float(diff.max())
    assert (out == ref).double().mean() >= 0.99, float((out == ref).double().mean())


# ------------------------------------------------------------------ the ops against their twins


@pytest.mark.parametrize("width", NORM_WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(width: int, dtype: torch.dtype, triton_backend: None) -> None:
    x = randn(3, TOKENS, width, seed=1, dtype=dtype, scale=3.0)  # leading dims are flattened into rows
    w = randn(width, seed=2, dtype=dtype, scale=0.2, shift=1.0)
    with no_host_sync():
        out = kernels.rms_norm(x, w, 1e-5)
    assert_matches_twin(out, rms_norm(x, w, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_gate(dtype: torch.dtype, triton_backend: None) -> None:
    width = NORM_WIDTHS[-1]
    # The lightning output is small (its qkv are scaled ×0.1 in the test init): eps 1e-6 matters there.
    o = randn(TOKENS, width, seed=3, dtype=dtype, scale=1e-3)
    gate_logits = randn(TOKENS, width, seed=4, dtype=dtype, scale=4.0)
    w = randn(width, seed=5, dtype=dtype, scale=0.2, shift=1.0)
    with no_host_sync():
        out = kernels.rms_norm_gate(o, gate_logits, w, 1e-6)
    assert_matches_twin(out, rms_norm_gate(o, gate_logits, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_rotates_q_and_k_in_place(dtype: torch.dtype, triton_backend: None) -> None:
    q0 = randn(TOKENS, HEADS, HEAD_DIM, seed=6, dtype=dtype)
    k0 = randn(TOKENS, KV_HEADS, HEAD_DIM, seed=7, dtype=dtype)
    # A varlen batch's positions restart per sequence; some are far out (angles of 1e6 rad need a full range
    # reduction in cos / sin).
    g = torch.Generator().manual_seed(8)
    positions = torch.cat([torch.arange(20), torch.arange(5, 12), torch.randint(0, 1 << 20, (TOKENS - 27,),
                                                                                generator=g)]).to(DEV)
    inv_freq = rope_inv_freq(ROTARY_DIM, 1e7).to(DEV)
    q, k = q0.clone(), k0.clone()
    with no_host_sync():
        kernels.rope_(q, k, positions, inv_freq)
    assert_matches_twin(q, apply_partial_rope(q0, positions, inv_freq))
    assert_matches_twin(k, apply_partial_rope(k0, positions, inv_freq))
    # Dims past rotary_dim pass through bit for bit.
    assert torch.equal(q[..., ROTARY_DIM:], q0[..., ROTARY_DIM:])
    assert torch.equal(k[..., ROTARY_DIM:], k0[..., ROTARY_DIM:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype: torch.dtype, triton_backend: None) -> None:
    h = randn(TOKENS, 2 * INTER, seed=9, dtype=dtype, scale=3.0)
    with no_host_sync():
        out = kernels.silu_mul(h)
    assert_matches_twin(out, silu_mul_ref(h))


def test_unsupported_operands_stay_on_the_twins(triton_backend: None) -> None:
    """fp64 (the tests' oracle dtype) and mixed dtypes (torch promotes: an fp32 weight makes an fp32 result)
    take the torch twins through the dispatch, exactly."""
    x, w = randn(5, 40, seed=10, dtype=torch.float64), randn(40, seed=11, dtype=torch.float64)
    assert torch.equal(kernels.rms_norm(x, w, 1e-5), rms_norm(x, w, 1e-5))
    assert torch.equal(kernels.rms_norm_gate(x, x, w, 1e-5), rms_norm_gate(x, x, w, 1e-5))
    assert torch.equal(kernels.silu_mul(x), silu_mul_ref(x))
    xb = x.to(torch.bfloat16)
    out = kernels.rms_norm(xb, w.float(), 1e-5)
    assert out.dtype == torch.float32 and torch.equal(out, rms_norm(xb, w.float(), 1e-5))
    q0 = randn(4, 2, 8, seed=12, dtype=torch.float64)
    q, k = q0.clone(), q0.clone()
    kernels.rope_(q, k, torch.arange(4, device=DEV), rope_inv_freq(4, 1e4).to(DEV))
    assert torch.equal(q, apply_partial_rope(q0, torch.arange(4, device=DEV), rope_inv_freq(4, 1e4).to(DEV)))


# ------------------------------------------------------------------ whole model: fused ops vs their twins


def _spy(monkeypatch: pytest.MonkeyPatch, calls: dict[str, int], name: str) -> None:
    fn: Callable = getattr(fused_ops, name)

    def counted(*args, **kwargs):
        calls[name] += 1
        return fn(*args, **kwargs)

    monkeypatch.setattr(fused_ops, name, counted)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiny_model_logits_unchanged(dtype: torch.dtype, triton_backend: None,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model (16 layers: norms of 64, lightning norm+gate of 64, RoPE on 8 of 16 dims, 2 softmax
    layers) on the Triton backend, the fused ops on or routed to their twins (everything else identical), on a
    left-padded varlen prefill plus two decode steps (RoPE at positions past the prompt).
    fp32: per-op differences are fp32 ulps, amplified through 16 random layers to ≤ 1e-5 on CPU. On CUDA the
    lightning kernels run their fp32 dots in tf32, where an fp32-ulp change of an input flips a rounding to
    10 mantissa bits (2^-11 relative): 1.9e-4 measured on an H100, held to 5e-3 (test_kernels.py allows 5e-2
    for the tf32 kernels against fp32 torch); a wrong op is O(1) (docs/model.md §11).
    bf16: per-op results are bit-identical but for rare 1-ulp flips (2 of 3520 elements of one norm in a
    prefill on CPU), which the random layers amplify like any bf16 rounding difference (a flip near a top-2
    routing tie moves a token's logits by O(0.1); the bf16 model on the twins lands ~7e-2 from the fp64
    model): the fused model must land as close to the fp64 model as the model on the twins does, within 1.5×
    as in test_kernels.py; a wrong op (eps, pairing, missing gate) is O(1)."""
    from conftest import make_model, random_ids

    from minimax01.config import MiniMaxConfig

    config = MiniMaxConfig.preset("tiny")
    ids = random_ids(2, 40, config.vocab_size, seed=13).to(DEV)
    mask = torch.ones_like(ids)
    mask[1, :25] = 0  # second row: 15 tokens, left padded
    steps = random_ids(2, 2, config.vocab_size, seed=14).to(DEV)
    model = make_model(config, dtype=dtype).to(DEV)

    # Experts on their torch reference in both runs: not what this test is about (test_kernels.py covers them),
    # and under the CPU interpreter the bf16 grouped kernels would take two minutes here.
    from minimax01.kernels.moe_ref import experts_ref

    monkeypatch.setattr(kernels, "moe_experts", experts_ref)
    calls = dict.fromkeys(("rms_norm", "rms_norm_gate", "rope_"), 0)
    for name in calls:
        _spy(monkeypatch, calls, name)
    fused = prefill_decode_logits(model, ids, mask, steps)
    assert all(calls.values()), calls  # every fused op ran in the model
    monkeypatch.setattr(fused_ops, "supported", lambda *a, **k: False)
    twins = prefill_decode_logits(model, ids, mask, steps)
    if dtype == torch.float32:
        assert rel(fused, twins) <= (5e-3 if CUDA else 1e-5)
        return
    ref = prefill_decode_logits(make_model(config).to(DEV), ids, mask, steps)  # fp64, on the twins
    assert rel(fused, ref) <= 1.5 * rel(twins, ref)
