"""Compute kernels of the model: each op has a torch reference (`*_ref.py`: runs anywhere, the oracle in tests)
and a Triton implementation beside it; kernels/dispatch.py picks one per call, kernels/ops.py holds the ops.

`MINIMAX01_KERNELS=torch|triton|auto` (default auto: Triton on CUDA when importable) chooses the backend for
the process; `with use_backend("torch"): ...` overrides it for a block (tests, benchmarks).

Modules of the model import it as `import minimax01.kernels as kernels`: `from minimax01 import kernels` names
the top package, which sits above the model.
"""

from minimax01.kernels.dispatch import decode_graph_capturable, step_kind, use_backend, use_triton
from minimax01.kernels.ops import (
    lightning_decode,
    lightning_prefill,
    linear,
    moe_experts,
    moe_experts_int8,
    moe_route,
    paged_decode_attention,
    paged_prefill_attention,
    rms_norm,
    rms_norm_gate,
    rope_,
    silu_mul,
    softmax_attention,
    w8a16_linear,
)

__all__ = [
    "decode_graph_capturable",
    "lightning_decode",
    "lightning_prefill",
    "linear",
    "moe_experts",
    "moe_experts_int8",
    "moe_route",
    "paged_decode_attention",
    "paged_prefill_attention",
    "rms_norm",
    "rms_norm_gate",
    "rope_",
    "silu_mul",
    "softmax_attention",
    "step_kind",
    "use_backend",
    "use_triton",
    "w8a16_linear",
]
