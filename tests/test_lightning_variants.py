"""Launch variants of the Triton lightning prefill (kernels/lightning_triton.py) against the fp64 block reference:
chunk 64/128, value blocks, state-only, varlen batches with a partial last chunk and nonzero initial states, fp32
and bf16 inputs.

Tolerances are test_kernels.py's (its docstring says why): fp32 inputs ‖err‖/‖ref‖ ≤ 1e-5 under the
interpreter (the same arithmetic in another order) and 5e-3 on CUDA (fp32 dots in tf32); bf16 inputs ≤ 2× the
error of the torch reference run in bf16 (+1e-4). A wrong decay exponent, a dropped partial chunk or a state
that is not carried is an O(1) error, far above these bounds. On CUDA the same cases run at the model's shape
(64 heads × 128, 8 K tokens), except fp32 with 128-token chunks: fp32 tiles are twice the bytes, and that launch
needs 352 KiB of shared memory on an H200 (the limit is 227 KiB).
"""

from __future__ import annotations

import pytest
import torch

from triton_harness import CUDA, DEV, check_lightning_prefill, only_where_kernels_run, relaunch_test  # noqa: F401

pytest.importorskip("triton")

from minimax01.kernels import lightning_triton as lt  # noqa: E402
from minimax01.kernels.lightning_ref import layer_decay_rates  # noqa: E402

HEADS, DIM = (64, 128) if CUDA else (2, 32)
FP32_TOL = 5e-3 if CUDA else 1e-5
BF16_FACTOR = 2
# Shorter than a chunk, ragged tails for C = 64 and 128, empty, exactly one 128-chunk.
LENS = [5000, 3, 0, 128, 3000] if CUDA else [5, 300, 0, 128, 70]

test_relaunch_under_interpreter = relaunch_test(__file__)


def decay_rates() -> torch.Tensor:
    """The model's fastest rate (layer 0 of 80, head 0: s = 0.92; λ^127 underflows fp32) and, on the CPU, a slow
    one (layer 70) that carries the state across many chunks; on CUDA a middle layer's 64 heads."""
    if CUDA:
        return layer_decay_rates(HEADS, 40, 80).to(DEV)
    return torch.tensor([float(layer_decay_rates(64, 0, 80)[0]), float(layer_decay_rates(64, 70, 80)[40])],
                        device=DEV)


def inputs(lens: list[int], dtype: torch.dtype, seed: int):
    """q, k, v [T, H, D] as strided views of one SiLU'd [T, H, 3D] projection; cu; random initial states."""
    g = torch.Generator().manual_seed(seed)
    t = sum(lens)
    q, k, v = torch.nn.functional.silu(torch.randn(t, HEADS, 3 * DIM, generator=g, dtype=torch.float64)).to(
        dtype).to(DEV).split(DIM, dim=-1)
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    states0 = (torch.randn(len(lens) + 1, HEADS, DIM, DIM, generator=g) * 0.1).to(DEV)
    return q, k, v, cu, states0


def check(cfg: dict, dtype: torch.dtype, lens: list[int], state_only: bool = False) -> None:
    q, k, v, cu, states0 = inputs(lens, dtype, seed=len(lens) + DIM)
    decay = decay_rates()
    slots = list(range(len(lens)))[::-1]
    states = states0.clone()
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEV)
    out = lt.prefill(q, k, v, decay, cu_t, states, torch.tensor(slots, device=DEV), max_len=max(lens),
                     state_only=state_only, **cfg)
    assert (out is None) == state_only or out.shape[0] == 0
    check_lightning_prefill(q, k, v, decay, cu, slots, states0, states, None if state_only else out, FP32_TOL,
                            BF16_FACTOR, cfg)
    assert torch.equal(states[-1], states0[-1])  # a slot outside the batch is untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [64, 128])
def test_prefill_variants_match_reference(dtype: torch.dtype, chunk: int) -> None:
    if CUDA and dtype == torch.float32 and chunk == 128:
        # Q [128, 128], Kᵀ [128, 128] and V [128, 64] fp32 tiles over 2 stages: 352 KiB of shared memory on an
        # H200 (OutOfResources), the limit is 227 KiB; fp32 with 128-token chunks still runs on the CPU.
        pytest.skip("fp32 tiles of 128-token chunks exceed the GPU's shared memory (352 KiB > 227 KiB)")
    block_e = 64 if CUDA else 16  # a value split (E/BE = 2) as at batch 1
    cfg = dict(block_e=block_e, chunk=chunk)
    if dtype == torch.bfloat16 and CUDA:
        cfg.update(num_warps=8 if chunk == 128 else 4, num_stages=2 if chunk == 128 else 3)
    check(cfg, dtype, LENS)


def test_state_only_variant() -> None:
    """The segmented prefill's first pass: states alone, from the same decays."""
    check(dict(block_e=DIM, chunk=64), torch.bfloat16, LENS, state_only=True)


@pytest.mark.parametrize("block_e", [32, 64, 128])
def test_sweep_shapes_at_the_model_head_dim(block_e: int) -> None:
    """The value blocks bench/lightning_sweep.py times (D = E = 128), with both chunk lengths. On the GPU with
    4 and 8 warps at the default stages (3 at C = 64, 2 at C = 128), which must compile unless the tiles cannot
    fit (block_e 128 at C = 128); every other pairing the sweep times is checked there against the fp64
    reference at 32 K (its error columns), so compiling all of them here too would only repeat that, slowly."""
    from triton.runtime.errors import OutOfResources

    global DIM
    saved = DIM
    DIM = 128
    try:
        lens = [LENS[0], 130] if CUDA else [130]
        for chunk in (64, 128):
            default_stages = 3 if chunk == 64 else 2
            for warps, stages in [(w, default_stages) for w in (4, 8)] if CUDA else [(4, 3)]:
                cfg = dict(block_e=block_e, chunk=chunk, num_warps=warps, num_stages=stages)
                try:
                    check(cfg, torch.bfloat16, lens)
                except OutOfResources:
                    if not (block_e == 128 and chunk == 128):
                        raise
    finally:
        DIM = saved


def test_bad_launch_parameters_are_refused() -> None:
    q, k, v, cu, states = inputs([10], torch.float32, seed=0)
    args = (q, k, v, decay_rates(), torch.tensor(cu, dtype=torch.int32, device=DEV), states,
            torch.tensor([0], device=DEV))
    with pytest.raises(ValueError):
        lt.prefill(*args, chunk=48)
    with pytest.raises(ValueError):
        lt.prefill(*args, block_e=DIM // 2 * 3 // 2 if DIM >= 32 else 24)
