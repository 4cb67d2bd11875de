"""Triton kernels against their torch references (fp64 oracle).

On a machine without CUDA the kernels run under Triton's interpreter (tests/triton_harness.py says how); on CUDA
they run compiled, at larger shapes. Skipped cleanly where Triton cannot be imported.

Tolerances: fp32 inputs — the kernels do the same arithmetic in another order, ‖err‖/‖ref‖ ≤ 1e-5 (GPU fp32
dots run in tf32: operands rounded to 10 mantissa bits, 2^-11 relative each, ~1e-3 after K-long sums, so on
CUDA fp32 is held to 5e-3). bf16 inputs — each bf16 rounding costs up to
2^-9 relative; the torch reference in bf16 itself lands near 3e-3..5e-3 from the fp64 oracle, so a kernel
passes when its error is ≤ 2× the reference's own bf16 error on the GPU, 3× under the interpreter (which
rounds fp32→bf16 toward zero: twice the error of round-to-nearest, plus a bias). A wrong decay exponent, a missed chunk or a wrong slot shows
up as an O(1) error, far above these bounds.
"""

from __future__ import annotations

import pytest
import torch

from triton_harness import (  # noqa: F401
    CUDA,
    DEV,
    check_lightning_prefill,
    only_where_kernels_run,
    prefill_decode_logits,
    rel,
    relaunch_test,
    triton_backend,
)

pytest.importorskip("triton")

import minimax01.kernels as kernels  # noqa: E402
from minimax01.kernels import dispatch, lightning_triton, moe_triton  # noqa: E402
from minimax01.kernels.lightning_ref import (  # noqa: E402
    layer_decay_rates,
    lightning_decode_ref,
    lightning_prefill_ref,
)
from minimax01.kernels.moe_ref import experts_ref  # noqa: E402

# Small shapes for the interpreter, real head sizes on the GPU.
HEADS, DIM = (64, 128) if CUDA else (4, 32)
HIDDEN, INTER, EXPERTS = (1024, 512, 8) if CUDA else (64, 96, 4)
FP32_TOL = 5e-3 if CUDA else 1e-5
BF16_FACTOR = 2


test_relaunch_under_interpreter = relaunch_test(__file__)


def silu_qkv(t: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [T, H, D] as strided views of one [T, H, 3D] projection, like the layer hands them over."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.nn.functional.silu(torch.randn(t, HEADS, 3 * DIM, generator=g, dtype=torch.float64))
    return qkv.to(dtype).to(DEV).split(DIM, dim=-1)


def decay_rates() -> torch.Tensor:
    # A shallow layer (fast decay) scaled up so that the decay matters within the short test sequences.
    return (layer_decay_rates(HEADS, 2, 16) * 4).to(DEV)


# ------------------------------------------------------------------ lightning prefill


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_varlen_matches_reference(dtype: torch.dtype, triton_backend: None) -> None:
    # Lengths: shorter than a chunk, several chunks with a ragged tail, empty, exactly one chunk.
    lens = [5, 150, 0, 64] if not CUDA else [5, 3000, 0, 64, 1000]
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    q, k, v = silu_qkv(cu[-1], seed=1, dtype=dtype)
    decay = decay_rates()
    g = torch.Generator().manual_seed(2)
    states0 = torch.randn(len(lens) + 2, HEADS, DIM, DIM, generator=g).to(DEV)
    slots = [3, 0, 5, 1, 2][: len(lens)]
    states = states0.clone()
    out = torch.full_like(v, float("nan"))  # poison: every row must be written
    out = kernels.lightning_prefill(q, k, v, decay, cu, states, slots)
    check_lightning_prefill(q, k, v, decay, cu, slots, states0, states, out, FP32_TOL, BF16_FACTOR)
    untouched = [i for i in range(states.shape[0]) if i not in slots]
    assert torch.equal(states[untouched], states0[untouched])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_configs_agree(dtype: torch.dtype) -> None:
    """Value split (BE), chunk length, warps and the bf16 inter product change only rounding."""
    q, k, v = silu_qkv(100, seed=3, dtype=dtype)
    decay = decay_rates()
    cu = torch.tensor([0, 100], dtype=torch.int32, device=DEV)
    slot = torch.tensor([0], device=DEV)
    st0 = torch.randn(1, HEADS, DIM, DIM, generator=torch.Generator().manual_seed(3)).to(DEV)
    configs = [dict(block_e=DIM, chunk=16, num_warps=8), dict(block_e=16, chunk=32), dict(block_e=32, chunk=64)]
    if dtype == torch.bfloat16:
        configs += [dict(block_e=16, chunk=32, inter_bf16=False)]  # the default for bf16 is True
    for cfg in configs:
        st = st0.clone()
        o = lightning_triton.prefill(q, k, v, decay, cu, st, slot, **cfg)
        check_lightning_prefill(q, k, v, decay, [0, 100], [0], st0, st, o, FP32_TOL, BF16_FACTOR, cfg)


def test_prefill_config_heuristic() -> None:
    """Batch 1 at 64 heads splits E in two (128 programs for 132 SMs); 4 equal sequences need no split; one
    long sequence among short ones is treated like batch 1."""
    assert lightning_triton.prefill_config(64, 128, 32768, 32768, 132)["block_e"] == 64
    assert lightning_triton.prefill_config(64, 128, 4 * 8192, 8192, 132)["block_e"] == 128
    assert lightning_triton.prefill_config(64, 128, 32768 + 300, 32768, 132)["block_e"] == 64
    assert lightning_triton.prefill_config(16, 128, 1000, 1000, 132)["block_e"] == 32


# ------------------------------------------------------------------ lightning decode


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_in_place_matches_reference(dtype: torch.dtype, triton_backend: None) -> None:
    batch = 3
    q, k, v = silu_qkv(batch, seed=4, dtype=dtype)
    decay = decay_rates()
    states0 = torch.randn(5, HEADS, DIM, DIM, generator=torch.Generator().manual_seed(5)).to(DEV)
    slots = torch.tensor([4, 0, 2], device=DEV)
    states = states0.clone()
    o = kernels.lightning_decode(q, k, v, decay, states, slots)
    s64 = states0[slots].double()
    o64 = lightning_decode_ref(q.double(), k.double(), v.double(), decay, s64)
    o_ref = lightning_decode_ref(q, k, v, decay, states0[slots].clone())
    assert rel(o, o64) <= (FP32_TOL if dtype == torch.float32 else BF16_FACTOR * rel(o_ref, o64) + 1e-4)
    # The state update is fp32 in the kernel whatever the input dtype: only the kᵀv product may round.
    assert rel(states[slots], s64) <= 1e-5
    assert torch.equal(states[[1, 3]], states0[[1, 3]])
    # Every value block width (decode_config picks 16 at small batches, 64 at large) gives the same step: the
    # state update is elementwise (the compiler may or may not fuse its multiply-add: 1 fp32 ulp, 1e-6), o's sum
    # over D may be reduced in another order (fp32: 1e-6; then one rounding to bf16 may flip: 2^-8).
    for block_e in (16, DIM):
        st = states0.clone()
        o_b = lightning_triton.decode(q, k, v, decay, st, slots, block_e=block_e)
        assert rel(st, states) <= 1e-6, block_e
        assert rel(o_b, o) <= (1e-6 if dtype == torch.float32 else 2**-8), block_e


def test_prefill_then_decode_equals_longer_prefill(triton_backend: None) -> None:
    """n tokens of prefill followed by one decode step == prefill of n+1 tokens (the state carries over)."""
    n = 70
    q, k, v = silu_qkv(n + 1, seed=6, dtype=torch.float32)
    decay = decay_rates()
    st_a = torch.zeros(1, HEADS, DIM, DIM, device=DEV)
    o_a = kernels.lightning_prefill(q, k, v, decay, [0, n + 1], st_a, [0])
    st_b = torch.zeros(1, HEADS, DIM, DIM, device=DEV)
    kernels.lightning_prefill(q[:n], k[:n], v[:n], decay, [0, n], st_b, [0])
    o_b = kernels.lightning_decode(q[n:], k[n:], v[n:], decay, st_b, torch.tensor([0], device=DEV))
    assert rel(o_b, o_a[n:]) <= FP32_TOL
    assert rel(st_b, st_a) <= FP32_TOL


# ------------------------------------------------------------------ MoE


def moe_inputs(t: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, HIDDEN, generator=g)
    w13 = torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=g) / HIDDEN**0.5
    w2 = torch.randn(EXPERTS, HIDDEN, INTER, generator=g) / INTER**0.5
    probs = torch.randn(t, EXPERTS, generator=g).softmax(-1)
    w, ids = probs.topk(2, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    return tuple(a.to(DEV) for a in (x.to(dtype), w.to(dtype), ids, w13.to(dtype), w2.to(dtype)))


@pytest.mark.parametrize("tokens", [1, 5, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_matches_reference(tokens: int, dtype: torch.dtype, triton_backend: None) -> None:
    if CUDA and dtype == torch.float32:
        pytest.skip("fp32 experts take the torch reference on the GPU (tf32 dots, tiles too large)")
    x, w, ids, w13, w2 = moe_inputs(tokens, dtype, seed=tokens)
    ref64 = experts_ref(*[a.double() if a.is_floating_point() else a for a in (x, w, ids, w13, w2)])
    tol = FP32_TOL if dtype == torch.float32 else BF16_FACTOR * rel(experts_ref(x, w, ids, w13, w2), ref64) + 1e-4
    assert rel(kernels.moe_experts(x, w, ids, w13, w2), ref64) <= tol
    # Every tile shape (decode, middle, prefill) computes the same function.
    for rows in (1, 32, 1000):
        cfg = moe_triton._config(rows)
        assert rel(moe_triton.triton_experts(x, w, ids, w13, w2, cfg), ref64) <= tol, cfg


def test_moe_grouped_mm_path() -> None:
    if not (hasattr(torch, "_grouped_mm") and (dispatch.grouped_mm_available(DEV) or not CUDA)):
        pytest.skip("torch._grouped_mm not available here")
    x, w, ids, w13, w2 = moe_inputs(40, torch.bfloat16, seed=7)
    ref64 = experts_ref(*[a.double() if a.is_floating_point() else a for a in (x, w, ids, w13, w2)])
    assert rel(moe_triton.grouped_mm_experts(x, w, ids, w13, w2), ref64) <= \
        BF16_FACTOR * rel(experts_ref(x, w, ids, w13, w2), ref64) + 1e-4


def test_lightning_prefill_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The segmented prefill runs from LIGHTNING_SEGMENTED_MIN_LEN tokens in the longest sequence (None: never)."""
    q = torch.zeros(4, HEADS, DIM, device=DEV)
    st = torch.zeros(1, HEADS, DIM, DIM, device=DEV)
    with kernels.use_backend("triton"):
        monkeypatch.setattr(dispatch, "LIGHTNING_SEGMENTED_MIN_LEN", None)
        assert dispatch.select("lightning_prefill", q, q, st, 10**6) == "triton"
        monkeypatch.setattr(dispatch, "LIGHTNING_SEGMENTED_MIN_LEN", 4096)
        assert dispatch.select("lightning_prefill", q, q, st, dispatch.LIGHTNING_SEGMENTED_MIN_LEN) == "segmented"
        assert dispatch.select("lightning_prefill", q, q, st, dispatch.LIGHTNING_SEGMENTED_MIN_LEN - 1) == "triton"
    with kernels.use_backend("torch"):
        assert dispatch.select("lightning_prefill", q, q, st, 10**6) == "torch"


def test_sort_by_expert() -> None:
    ids = torch.tensor([[2, 0], [2, 3], [0, 2]], device=DEV)
    order, counts, offs = moe_triton.sort_by_expert(ids, 5)
    assert counts.tolist() == [2, 0, 3, 1, 0]
    assert offs.tolist() == [0, 2, 2, 5, 6, 6]
    assert ids.reshape(-1)[order].tolist() == [0, 0, 2, 2, 2, 3]


# ------------------------------------------------------------------ dispatch


def test_backend_selection() -> None:
    with kernels.use_backend("auto"):
        assert kernels.use_triton(torch.device("cpu")) is False  # auto: Triton on CUDA only
        assert kernels.use_triton(torch.device("cuda")) is True
    with kernels.use_backend("torch"):
        assert kernels.use_triton(torch.device("cuda")) is False
    with kernels.use_backend("triton"):
        assert kernels.use_triton(torch.device("cpu")) is True
    with pytest.raises(ValueError):
        kernels.use_backend("cuda")


def test_fp64_stays_on_reference(triton_backend: None) -> None:
    """fp64 (the tests' oracle dtype) is not a kernel dtype: the dispatch must fall back, not fail."""
    q, k, v = silu_qkv(10, seed=8, dtype=torch.float64)
    st = torch.zeros(1, HEADS, DIM, DIM, dtype=torch.float64, device=DEV)
    o = kernels.lightning_prefill(q, k, v, decay_rates(), [0, 10], st, [0])
    o64, _ = lightning_prefill_ref(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), decay_rates())
    assert torch.equal(o.transpose(0, 1), o64)


# ------------------------------------------------------------------ whole model through the dispatch


def _tiny_logits(model, ids: torch.Tensor, mask: torch.Tensor, steps: torch.Tensor, backend: str) -> torch.Tensor:
    """Logits of every real prompt token of a varlen prefill and of each decode step: [tokens, vocab]."""
    with kernels.use_backend(backend):
        return prefill_decode_logits(model, ids, mask, steps)


def test_tiny_model_through_the_kernels() -> None:
    """The tiny model (4 heads of 16, 4 experts) on a varlen batch (150 and 30 tokens: several prefill chunks,
    left padding) plus two decode steps, Triton kernels against the torch references.
    fp32: the lightning kernels compute the same function (experts stay on the reference in fp32), so the
    logits agree to fp32 rounding (1e-5; on the GPU the kernels' fp32 dots run in tf32, ~1e-3 per layer, so
    5e-2 after 16 layers). bf16: rounding differences grow through the random layers (the torch
    bf16 model itself lands ~8e-2 from the fp64 model, single tokens up to 0.3 where a near-tie in the top-2
    routing flips), so over all 184 positions the Triton model must land as close to the fp64 model as the
    torch bf16 model does, within 1.5x; a wrong state carry, slot or expert mix is O(1)."""
    from conftest import make_model, random_ids

    from minimax01.config import MiniMaxConfig
    from minimax01.tiny import tiny_config

    # 8 layers (7 lightning + 1 softmax) under the CPU interpreter: every kind of layer, half the 16 layers' time.
    config = MiniMaxConfig.preset("tiny") if CUDA else tiny_config(MiniMaxConfig.preset("tiny").vocab_size, layers=8)
    ids = random_ids(2, 150, config.vocab_size, seed=3).to(DEV)
    mask = torch.ones_like(ids)
    mask[1, :120] = 0  # second row: 30 tokens, left padded
    steps = random_ids(2, 2, config.vocab_size, seed=4).to(DEV)
    model = make_model(config, dtype=torch.float32).to(DEV)
    fp32_tol = 5e-2 if CUDA else 1e-5
    assert rel(_tiny_logits(model, ids, mask, steps, "triton"), _tiny_logits(model, ids, mask, steps, "torch")) <= fp32_tol
    ref = _tiny_logits(make_model(config).to(DEV), ids, mask, steps, "torch")  # fp64
    model = make_model(config, dtype=torch.bfloat16).to(DEV)
    err_torch = rel(_tiny_logits(model, ids, mask, steps, "torch"), ref)
    assert rel(_tiny_logits(model, ids, mask, steps, "triton"), ref) <= 1.5 * err_torch
