"""Which expert-mixture implementation runs a many-token (prefill) call: a measured table, per GPU.

Candidates (same function, kernels/ops.py runs them):
- "grouped": the two grouped Triton kernels (moe_triton.triton_experts), no host sync;
- "grouped_mm": torch._grouped_mm (CUTLASS) on the sorted rows (moe_triton.grouped_mm_experts), no host sync;
- "per_expert": one cuBLAS GEMM pair per expert (moe_per_expert.py), one host sync.
bench/prefill_kernels.py times them at the model's shape and prints the rows of MEASURED to paste here. A row
is (GPU name, experts, hidden, intermediate, top-k) -> [(min tokens, implementation), ...] in increasing
min tokens: the last entry whose min tokens ≤ the call's tokens wins. Shapes or GPUs without a row fall back
to `default_choice` (the rule measured on an H100 before this table: CUTLASS from 64 rows per expert).
"""

from __future__ import annotations

import torch

IMPLEMENTATIONS = ("grouped", "grouped_mm", "per_expert")
# Rows per expert from which torch._grouped_mm (CUTLASS) beat the grouped Triton kernels on an H100.
GROUPED_MM_MIN_ROWS_PER_EXPERT = 64

MEASURED: dict[tuple[str, int, int, int, int], list[tuple[int, str]]] = {
}


def default_choice(tokens: int, num_experts: int, top_k: int, grouped_mm: bool) -> str:
    """The choice without a measurement: CUTLASS once experts get GROUPED_MM_MIN_ROWS_PER_EXPERT rows."""
    if grouped_mm and tokens * top_k >= GROUPED_MM_MIN_ROWS_PER_EXPERT * num_experts:
        return "grouped_mm"
    return "grouped"


def choose(device: torch.device, tokens: int, num_experts: int, hidden: int, inter: int, top_k: int,
           grouped_mm: bool, may_sync: bool) -> str:
    """The implementation for `tokens` tokens on `device`. grouped_mm: torch._grouped_mm runs there;
    may_sync: a host sync is allowed (not during a CUDA-graph capture), else "per_expert" is never chosen."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    choice = default_choice(tokens, num_experts, top_k, grouped_mm)
    for min_tokens, impl in MEASURED.get((name, num_experts, hidden, inter, top_k), []):
        if tokens >= min_tokens:
            choice = impl
    if (choice == "grouped_mm" and not grouped_mm) or (choice == "per_expert" and not may_sync):
        return default_choice(tokens, num_experts, top_k, grouped_mm)
    return choice
