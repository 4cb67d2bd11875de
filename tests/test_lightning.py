"""Lightning attention references (docs/model.md §3): block prefill == token recurrence, ALiBi slopes, per-layer decay
from the GLOBAL layer index, and the varlen/slot dispatch of `minimax01.kernels`."""

from __future__ import annotations

import pytest
import torch

import minimax01.kernels as kernels
from minimax01.config import MiniMaxConfig
from minimax01.kernels.lightning_ref import (
    build_slopes,
    layer_decay_rates,
    lightning_decode_ref,
    lightning_prefill_ref,
    lightning_recurrence_ref,
)
from minimax01.model.lightning import LightningAttention
from minimax01.causal_lm import MiniMaxForCausalLM

D = 16  # head dim of these tests


def qkv(heads: int, n: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """q, k, v [heads, n, D] after SiLU, as the layer produces them (mostly positive, O(1))."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.nn.functional.silu(torch.randn(heads, n, D, generator=g, dtype=torch.float64)).to(dtype)
                 for _ in range(3))


def random_state(heads: int, seed: int) -> torch.Tensor:
    return torch.randn(heads, D, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------ block algorithm == recurrence
@pytest.mark.parametrize("heads", [4, 6])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 600])
@pytest.mark.parametrize("with_state", [False, True])
def test_block_prefill_equals_recurrence(heads: int, n: int, with_state: bool) -> None:
    q, k, v = qkv(heads, n, seed=n + heads)
    # a deep layer (slow decay: the state carries across blocks) of a 16-layer model
    decay = layer_decay_rates(heads, layer_idx=13, num_layers=16)
    state = random_state(heads, seed=7) if with_state else None
    o_blk, s_blk = lightning_prefill_ref(q, k, v, decay, state)
    o_rec, s_rec = lightning_recurrence_ref(q, k, v, decay, state)
    assert o_blk.dtype == s_blk.dtype == torch.float64
    # fp64: both evaluate the same sums in a different order; docs/model.md §3.4 measured 1.5e-12
    assert rel_err(o_blk, o_rec) < 1e-11
    assert rel_err(s_blk, s_rec) < 1e-11
    if state is not None:
        assert not torch.equal(state, s_blk)  # the initial state was not modified in place


def test_recurrence_matches_closed_form() -> None:
    """o_t = Σ_{s≤t} λ^{t−s} (q_t·k_s) v_s (docs/model.md §3.3), written densely."""
    heads, n = 4, 40
    q, k, v = qkv(heads, n, seed=3)
    decay = layer_decay_rates(heads, 0, 16).double()
    t = torch.arange(n, dtype=torch.float64)
    dist = t[:, None] - t[None, :]  # t - s
    weights = torch.where(dist >= 0, torch.exp(-decay.view(-1, 1, 1) * dist.clamp(min=0)), 0.0)  # [H, n, n]
    expected = ((q @ k.transpose(-1, -2)) * weights) @ v
    o_rec, _ = lightning_recurrence_ref(q, k, v, decay)
    assert rel_err(o_rec, expected) < 1e-12


def test_block_size_does_not_change_the_result() -> None:
    q, k, v = qkv(4, 300, seed=5)
    decay = layer_decay_rates(4, 3, 16)
    o256, s256 = lightning_prefill_ref(q, k, v, decay, block=256)
    o64, s64 = lightning_prefill_ref(q, k, v, decay, block=64)
    assert rel_err(o64, o256) < 1e-11 and rel_err(s64, s256) < 1e-11


def test_bf16_inputs_keep_an_fp32_state() -> None:
    """docs/model.md §3.4 dtypes: output in the model dtype, state fp32; close to the fp64 result at bf16 precision."""
    q, k, v = qkv(4, 300, seed=9, dtype=torch.bfloat16)
    decay = layer_decay_rates(4, 3, 16)
    o, s = lightning_prefill_ref(q, k, v, decay, torch.zeros(4, D, D))
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    o_ref, s_ref = lightning_recurrence_ref(q.double(), k.double(), v.double(), decay)
    # bf16 has 8 mantissa bits (rel. 2^-9 per rounding); a few roundings per term -> ~1e-2 relative
    assert rel_err(o.double(), o_ref) < 2e-2 and rel_err(s.double(), s_ref) < 2e-2


# ------------------------------------------------------------------ slopes and decay
def test_slopes_four_heads() -> None:
    assert build_slopes(4) == [0.25, 0.0625, 0.015625, 0.00390625]


def test_slopes_64_heads() -> None:
    expected = [2 ** (-(h + 1) / 8) for h in range(64)]
    assert build_slopes(64) == pytest.approx(expected, rel=1e-14)
    assert build_slopes(64)[-1] == pytest.approx(2**-8, rel=1e-14)


def test_slopes_non_power_of_two() -> None:
    """ALiBi recipe: the 4-head slopes, then every other slope of the 8-head table (2^-1, 2^-3), truncated."""
    assert build_slopes(6) == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3], rel=1e-14)


def test_decay_uses_the_global_layer_index(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig) -> None:
    """s_{l,h} = slope_h·(1 − l/(L−1) + 1e−5) with l counting the softmax layers too (docs/model.md §3.2). Layer 9 is the
    8th lightning layer: with the linear index the factor would differ by 1/15."""
    L, H = tiny_config.num_hidden_layers, tiny_config.num_attention_heads
    slopes = torch.tensor([2 ** (-8 * (h + 1) / H) for h in range(H)], dtype=torch.float64)
    for layer_idx in tiny_config.linear_layers:
        attn = tiny_model.model.layers[layer_idx].self_attn
        assert isinstance(attn, LightningAttention)
        got = attn.decay(torch.device("cpu"))
        assert got.dtype == torch.float32  # never rounded with the model dtype (docs/model.md §10 #4)
        expected = slopes * (1 - layer_idx / (L - 1) + 1e-5)
        torch.testing.assert_close(got.double(), expected, rtol=1e-7, atol=0)  # fp32 storage
    linear_idx = tiny_config.linear_layers.index(9)
    wrong = slopes * (1 - linear_idx / (L - 1) + 1e-5)
    assert rel_err(tiny_model.model.layers[9].self_attn.decay(torch.device("cpu")).double(), wrong) > 0.1


def test_decay_is_fp32_in_a_bf16_model(tiny_config: MiniMaxConfig) -> None:
    layer = LightningAttention(tiny_config, 3).to(torch.bfloat16)
    assert layer.decay(torch.device("cpu")).dtype == torch.float32


def test_single_layer_decay_factor() -> None:
    assert float(layer_decay_rates(64, 78, 80)[0]) == pytest.approx(2 ** (-1 / 8) * (1 - 78 / 79 + 1e-5), rel=1e-6)
    assert float(layer_decay_rates(4, 0, 1)[0]) == pytest.approx(0.25 * (1 + 1e-5), rel=1e-6)


# ------------------------------------------------------------------ varlen dispatch with slots
def test_varlen_prefill_equals_per_sequence_calls() -> None:
    heads, lens, slots = 6, [300, 1, 0, 257, 40], [3, 0, 5, 1, 4]
    decay = layer_decay_rates(heads, 5, 16)
    q, k, v = qkv(heads, sum(lens), seed=11)  # [H, T, D]
    states = torch.randn(6, heads, D, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    before = states.clone()
    cu = [0] + [sum(lens[: i + 1]) for i in range(len(lens))]
    out = kernels.lightning_prefill(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), decay, cu, states,
                                    slots)  # [T, H, D]
    for b, slot in enumerate(slots):
        lo, hi = cu[b], cu[b + 1]
        if hi == lo:
            assert torch.equal(states[slot], before[slot])  # an empty sequence leaves its state alone
            continue
        o_ref, s_ref = lightning_prefill_ref(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], decay, before[slot])
        torch.testing.assert_close(out[lo:hi].transpose(0, 1), o_ref, rtol=0, atol=0)
        torch.testing.assert_close(states[slot], s_ref, rtol=0, atol=0)
    assert torch.equal(states[2], before[2])  # a slot outside the batch is untouched


def test_decode_equals_reference_step() -> None:
    """One step per sequence: S ← λS + kᵀv, o = q·S (docs/model.md §3.3), written out here with einsum."""
    heads, slots = 4, torch.tensor([2, 0, 3])
    decay = layer_decay_rates(heads, 1, 16)
    q, k, v = (t.transpose(0, 1) for t in qkv(heads, 3, seed=13))  # [B=3, H, D]
    states = torch.randn(5, heads, D, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    before = states.clone()
    o = kernels.lightning_decode(q, k, v, decay, states, slots)
    lam = torch.exp(-decay.double()).view(1, heads, 1, 1)
    new = lam * before[slots] + torch.einsum("bhd,bhe->bhde", k, v)
    torch.testing.assert_close(states[slots], new, rtol=1e-14, atol=0)
    torch.testing.assert_close(o, torch.einsum("bhd,bhde->bhe", q, new), rtol=1e-13, atol=1e-14)
    for untouched in (1, 4):
        assert torch.equal(states[untouched], before[untouched])


def test_decode_ref_updates_the_state_in_place() -> None:
    heads = 4
    q, k, v = (t.transpose(0, 1) for t in qkv(heads, 1, seed=17))  # [1, H, D]
    state = torch.zeros(1, heads, D, D, dtype=torch.float64)
    o = lightning_decode_ref(q, k, v, layer_decay_rates(heads, 0, 16), state)
    torch.testing.assert_close(state[0], torch.einsum("hd,he->hde", k[0], v[0]), rtol=0, atol=0)
    torch.testing.assert_close(o[0], torch.einsum("hd,hde->he", q[0], state[0]), rtol=1e-14, atol=0)
