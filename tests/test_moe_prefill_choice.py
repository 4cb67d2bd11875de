"""The experts' implementation (kernels/moe_prefill_choice.py, kernels/dispatch.py): one per GPU and shape for
the steps with a prefill chunk, whatever their token count (prefix caching needs a token computed the same way
in chunks of any length); a token-count rule for decode steps."""

from __future__ import annotations

import pytest
import torch

import minimax01.kernels as kernels
from minimax01.kernels import dispatch
from minimax01.kernels import moe_prefill_choice as choice

CPU = torch.device("cpu")
SHAPE = dict(num_experts=32, hidden=6144, inter=9216, top_k=2)
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_table_entry_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(choice.MEASURED, ("cpu", 32, 6144, 9216, 2), "grouped")
    assert choice.prefill_choice(CPU, **SHAPE, grouped_mm=True) == "grouped"
    monkeypatch.setitem(choice.MEASURED, ("cpu", 32, 6144, 9216, 2), "grouped_mm")
    assert choice.prefill_choice(CPU, **SHAPE, grouped_mm=True) == "grouped_mm"
    # No torch._grouped_mm on this device: the Triton kernels, whatever the table says.
    assert choice.prefill_choice(CPU, **SHAPE, grouped_mm=False) == "grouped"


def test_defaults_without_measurement() -> None:
    assert choice.prefill_choice(CPU, **SHAPE, grouped_mm=True) == "grouped_mm"
    assert choice.prefill_choice(CPU, **SHAPE, grouped_mm=False) == "grouped"
    small = dict(num_experts=4, top_k=2)
    assert choice.decode_choice(8, **small, grouped_mm=True) == "grouped"
    assert choice.decode_choice(128, **small, grouped_mm=True) == "grouped_mm"  # 64 rows per expert
    assert choice.decode_choice(128, **small, grouped_mm=False) == "grouped"


def test_table_entries_are_candidates() -> None:
    for key, impl in choice.MEASURED.items():
        assert len(key) == 5 and impl in choice.IMPLEMENTATIONS


@pytest.mark.skipif(not dispatch.triton_available(), reason="needs triton")
def test_prefill_steps_ignore_the_token_count() -> None:
    """Inside a prefill step every token count gets the same implementation (1 and 2 tokens included, which a
    decode step streams through the GEMVs); outside one the token-count rule holds."""
    w13, w2 = torch.zeros(4, 192, 64, dtype=torch.bfloat16), torch.zeros(4, 64, 96, dtype=torch.bfloat16)

    def pick(tokens: int) -> str:
        x = torch.zeros(tokens, 64, dtype=torch.bfloat16)
        return dispatch.select("moe_experts", x, torch.zeros(tokens, 2, dtype=torch.long), w13, w2)

    with kernels.use_backend("triton"):
        with kernels.step_kind(prefill=True):
            assert {pick(t) for t in (1, 2, 3, 40, 300, 5000)} == {"grouped"}  # no _grouped_mm on a CPU
        with kernels.step_kind(prefill=False):
            assert pick(1) == "gemv" and pick(40) == "grouped"
        assert pick(2) == "gemv"  # outside a step: the token-count rule


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prefill_experts_row_invariant_on_gpu() -> None:
    """At the model's shape (32 experts, 6144 -> 9216, top-2, bf16), a token's expert output inside a prefill
    step is bitwise the same whether it is computed among 1, 3, 200 or 3000 tokens."""
    g = torch.Generator(device="cuda").manual_seed(0)
    E, H, I = 32, 6144, 9216
    w13 = torch.randn(E, 2 * I, H, device="cuda", generator=g, dtype=torch.bfloat16) * H**-0.5
    w2 = torch.randn(E, H, I, device="cuda", generator=g, dtype=torch.bfloat16) * I**-0.5
    x = torch.randn(3000, H, device="cuda", generator=g, dtype=torch.bfloat16)
    weights, ids = kernels.moe_route(x @ torch.randn(E, H, device="cuda", generator=g, dtype=torch.bfloat16).t(), 2,
                                  torch.bfloat16)
    with kernels.step_kind(prefill=True):
        full = kernels.moe_experts(x, weights, ids, w13, w2)
        for n in (1, 3, 200):
            assert torch.equal(kernels.moe_experts(x[:n], weights[:n], ids[:n], w13, w2), full[:n]), n
