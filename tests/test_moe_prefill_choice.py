"""The measured choice of the MoE prefill implementation (kernels/moe_prefill_choice.py): table lookup,
fallbacks where a path cannot run, the default off the table."""

from __future__ import annotations

import pytest
import torch

from minimax01.kernels import moe_prefill_choice as choice

CPU = torch.device("cpu")
SHAPE = dict(num_experts=32, hidden=6144, inter=9216, top_k=2)


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(choice.MEASURED, ("cpu", 32, 6144, 9216, 2),
                        [(0, "grouped"), (1024, "grouped_mm"), (4096, "per_expert")])


def test_table_steps(table: None) -> None:
    pick = [choice.choose(CPU, t, **SHAPE, grouped_mm=True, may_sync=True) for t in (512, 1024, 4095, 4096, 9000)]
    assert pick == ["grouped", "grouped_mm", "grouped_mm", "per_expert", "per_expert"]


def test_fallback_where_a_path_cannot_run(table: None) -> None:
    # No host sync allowed (CUDA-graph capture): the per-expert loop is replaced by the default.
    assert choice.choose(CPU, 4096, **SHAPE, grouped_mm=True, may_sync=False) == "grouped_mm"
    # No torch._grouped_mm on this device: the Triton kernels.
    assert choice.choose(CPU, 2048, **SHAPE, grouped_mm=False, may_sync=True) == "grouped"


def test_default_without_measurement() -> None:
    shape = dict(num_experts=4, hidden=64, inter=96, top_k=2)  # no table row
    assert choice.choose(CPU, 8, **shape, grouped_mm=True, may_sync=True) == "grouped"
    assert choice.choose(CPU, 128, **shape, grouped_mm=True, may_sync=True) == "grouped_mm"  # 64 rows each
    assert choice.choose(CPU, 128, **shape, grouped_mm=False, may_sync=True) == "grouped"


def test_table_rows_are_well_formed() -> None:
    for key, steps in choice.MEASURED.items():
        assert len(key) == 5 and steps and steps[0][0] == 0
        assert [t for t, _ in steps] == sorted(t for t, _ in steps)
        assert all(impl in choice.IMPLEMENTATIONS for _, impl in steps)
