"""Which expert-mixture implementation runs the experts of a prefill (or mixed) step: one per GPU and model shape,
never one per token count.

Why not per token count: prefix caching (engine/prefix_cache.py) restores a prompt's prefix and prefills only the
rest, so the same token is computed in chunks of other lengths with caching on than off. Its expert outputs are
bitwise the same only if the implementation computes a row the same way whatever the number of rows. The
candidates do (a row's dot products run over the hidden dim in the same order in every tile shape): the grouped
Triton kernels (moe_triton.triton_experts), torch._grouped_mm (CUTLASS, moe_triton.grouped_mm_experts) and the
persistent TMA kernels over expert-padded rows (moe_tma_triton.tma_experts, tile config fixed per shape), but
not each other's way: switching between the first two at a token count changed greedy tokens of a bf16 model on
a GPU.
A per-expert cuBLAS loop was measured too (bench/prefill_kernels.py): cuBLAS picks its kernel (split-K
included) by each expert's row count, so it is not a candidate.

Decode steps (every sequence one new token) keep a token-count rule (kernels/dispatch.py): their batch is the
same with caching on and off. bench/prefill_kernels.py times the candidates at the model's shape over prefill
chunk sizes and prints the MEASURED entry to paste here: (GPU name, experts, hidden, intermediate, top-k) ->
implementation.
"""

from __future__ import annotations

import torch

# grouped_tma: moe_tma_triton.tma_experts (persistent kernels over expert-padded rows, TMA loads on Hopper).
IMPLEMENTATIONS = ("grouped", "grouped_mm", "grouped_tma")
# Rows per expert from which torch._grouped_mm (CUTLASS) beat the grouped Triton kernels on an H100 (decode
# steps' rule).
GROUPED_MM_MIN_ROWS_PER_EXPERT = 64

MEASURED: dict[tuple[str, int, int, int, int], str] = {
    # bench/results/prefill-kernels-moe-2026-11-30: summed over 512..16 384-token chunks the persistent TMA
    # kernels 46.1 ms, CUTLASS 51.5, the grouped Triton kernels 55.3 (4096 tokens: 5.78 / 6.92 / 7.22 ms).
    ("NVIDIA H200", 32, 6144, 9216, 2): "grouped_tma",
}


def decode_choice(tokens: int, num_experts: int, top_k: int, grouped_mm: bool) -> str:
    """A decode step's implementation: CUTLASS once experts get GROUPED_MM_MIN_ROWS_PER_EXPERT rows."""
    if grouped_mm and tokens * top_k >= GROUPED_MM_MIN_ROWS_PER_EXPERT * num_experts:
        return "grouped_mm"
    return "grouped"


def prefill_choice(device: torch.device, num_experts: int, hidden: int, inter: int, top_k: int,
                   grouped_mm: bool) -> str:
    """A prefill step's implementation on `device`, whatever its token count. grouped_mm: torch._grouped_mm
    runs there. Without a measurement: CUTLASS where it runs (prefill chunks are mostly long), else Triton."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    choice = MEASURED.get((name, num_experts, hidden, inter, top_k), "grouped_mm" if grouped_mm else "grouped")
    return "grouped" if choice == "grouped_mm" and not grouped_mm else choice
