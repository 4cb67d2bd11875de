"""Which implementation runs each op: the one place that decides.

The decision takes, in this order:
1. the backend policy: `MINIMAX01_KERNELS=auto|torch|triton`, read once at import (auto: Triton on CUDA when
   it imports), or an explicit `use_backend(name)` block (tests, benchmarks);
2. the operands: the dtypes and shapes each Triton kernel takes (its module's `supported`), and token counts
   that pick between kernels of one op (measured on an H100, docs/kernels.md);
3. CUDA-graph capture: a torch fallback that syncs with the host cannot run while a capture records.
`select(op, *operands)` returns the name of the implementation to run; kernels/ops.py runs it. The Triton
modules are imported only once the policy has chosen Triton, so the package works where Triton does not.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

# GROUPED_MM_MIN_ROWS_PER_EXPERT: assignments per expert from which torch._grouped_mm (CUTLASS) beats the grouped
# Triton kernels (bf16 decode steps); the int8 experts take their per-expert torch GEMMs from there on.
from minimax01.kernels.moe_prefill_choice import GROUPED_MM_MIN_ROWS_PER_EXPERT, decode_choice, prefill_choice

BACKENDS = ("auto", "torch", "triton")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # fp64 is the tests' oracle dtype: torch
HALF_DTYPES = (torch.bfloat16, torch.float16)

# Token counts up to which the per-token expert GEMVs (moe_decode.py) beat the sorted grouped kernels.
GEMV_MAX_TOKENS = 2
# Longest sequence (tokens) from which the segmented lightning prefill (lightning_segmented.py) runs instead of
# the single walk per (sequence, head); None: never. Off: on an H200 (bench/results/prefill-kernels-2026-11-30) the
# segmented rows lost to the walk at every length from 4 K to 512 K tokens (they read Q, K and V twice); set it
# to the shortest length from which they win on a GPU where bench/prefill_kernels.py says they do.
LIGHTNING_SEGMENTED_MIN_LEN: int | None = None
# Largest number of rows the w8a16 Triton GEMM takes. Above it the torch path wins: its cast costs 3 bytes per
# weight (≈ 50 µs for 6144 x 8192 on an H100) on top of a cuBLAS GEMM that stays at the bf16 weight-read time
# up to M ≈ 256, while the kernel's time grows with M (H100, bench/results/quant-2026-11-25: 77 µs at M = 128
# vs ≥ 100 µs for cast + matmul; 114 µs at M = 256 vs ≈ 100 µs).
W8A16_TRITON_MAX_M = 128
ROUTE_MAX_EXPERTS = 1024  # the routing kernel holds a token's logits in one block


def triton_available() -> bool:
    """Whether the triton package imports here."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class BackendPolicy:
    """Which kernels run: 'torch' (the references everywhere), 'triton' (Triton wherever the operands allow,
    on any device: under TRITON_INTERPRET=1 on the CPU too) or 'auto' (Triton on CUDA when it imports)."""

    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"kernel backend must be one of {BACKENDS}, got {self.backend!r}")

    @classmethod
    def from_env(cls) -> BackendPolicy:
        name = os.environ.get("MINIMAX01_KERNELS", "auto")
        return cls(name if name in BACKENDS else "auto")  # an unknown value has always meant 'auto'

    def runs_triton(self, device: torch.device) -> bool:
        if self.backend == "torch":
            return False
        if self.backend == "triton":
            if not triton_available():
                raise RuntimeError("MINIMAX01_KERNELS=triton but triton cannot be imported")
            return True
        return device.type == "cuda" and triton_available()


# Process-wide (not per thread, like the environment variable it stands for): the server's engine thread sees
# the policy its process started with.
_policy = BackendPolicy.from_env()


@contextlib.contextmanager
def _installed(policy: BackendPolicy) -> Iterator[BackendPolicy]:
    global _policy
    before, _policy = _policy, policy
    try:
        yield policy
    finally:
        _policy = before


# Set by the model for the layers of one step (`step_kind`): True while a step with a prefill chunk runs, False
# while a pure decode step runs, None outside a model step (direct kernel calls: the token-count rules).
_prefill_step: contextvars.ContextVar[bool | None] = contextvars.ContextVar("prefill_step", default=None)


@contextlib.contextmanager
def step_kind(prefill: bool) -> Iterator[None]:
    """`with step_kind(prefill=not batch.is_decode): <layers>`: ops whose implementation would otherwise follow
    the token count take the one that computes a token the same way in a chunk of any length (prefix caching
    relies on it: kernels/moe_prefill_choice.py)."""
    token = _prefill_step.set(prefill)
    try:
        yield
    finally:
        _prefill_step.reset(token)


def use_backend(name: str) -> contextlib.AbstractContextManager[BackendPolicy]:
    """`with use_backend("torch"): ...` runs the block on that backend and restores the previous policy after.
    An unknown name raises ValueError here, before the block."""
    return _installed(BackendPolicy(name))


def use_triton(device: torch.device) -> bool:
    """Whether the active policy runs Triton kernels for operands on `device` (operands permitting)."""
    return _policy.runs_triton(device)


def decode_graph_capturable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a pure-decode step of a `dtype` model on `device` runs only ops that read their lengths and block
    tables from device tensors, so that a CUDA graph can capture it: the rules below then pick the paged decode
    kernel and the lightning decode kernel, and the experts' kernels or their sync-free torch form."""
    return use_triton(device) and dtype in KERNEL_DTYPES


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on `device`'s current stream."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def grouped_mm_available(device: torch.device) -> bool:
    """torch._grouped_mm (CUTLASS) exists and runs on `device` (Hopper or newer)."""
    return (device.type == "cuda" and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_capability(device) >= (9, 0))


# ------------------------------------------------------------------ rules: (triton allowed, operands) -> name


def _lightning(triton: bool, q: torch.Tensor, v: torch.Tensor, states: torch.Tensor) -> str:
    if not triton or q.dtype not in KERNEL_DTYPES or states.dtype != torch.float32:
        return "torch"
    import minimax01.kernels.lightning_triton as lightning_triton

    return "triton" if lightning_triton.supported(q.shape[-1], v.shape[-1]) else "torch"


def _lightning_prefill(triton: bool, q: torch.Tensor, v: torch.Tensor, states: torch.Tensor, max_len: int) -> str:
    impl = _lightning(triton, q, v, states)
    on = LIGHTNING_SEGMENTED_MIN_LEN is not None and max_len >= LIGHTNING_SEGMENTED_MIN_LEN
    return "segmented" if impl == "triton" and on else impl


def _moe_route(triton: bool, logits: torch.Tensor) -> str:
    ok = triton and logits.dtype in KERNEL_DTYPES and logits.shape[-1] <= ROUTE_MAX_EXPERTS
    return "triton" if ok else "torch"


def _moe_experts(triton: bool, x: torch.Tensor, ids: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> str:
    # 16-bit only: fp32 experts would run the dots in tf32 and their tiles overflow shared memory.
    if triton and w13.dtype == x.dtype == w2.dtype and x.dtype in HALF_DTYPES:
        import minimax01.kernels.moe_triton as moe_triton

        if moe_triton.supported(x.shape[1], w2.shape[2]):
            if _prefill_step.get():  # one implementation for chunks of every length
                return prefill_choice(x.device, w13.shape[0], x.shape[1], w2.shape[2], ids.shape[1],
                                      grouped_mm_available(x.device))
            if x.shape[0] <= GEMV_MAX_TOKENS:  # weight streaming without the sort (decode, small batch)
                return "gemv"
            return decode_choice(x.shape[0], w13.shape[0], ids.shape[1], grouped_mm_available(x.device))
    return "dense" if capturing(x.device) else "torch"  # the reference syncs (unique, nonzero)


def _moe_experts_int8(triton: bool, x: torch.Tensor, ids: torch.Tensor, w13: torch.Tensor,
                      w2: torch.Tensor) -> str:
    # The grouped kernels while experts get few rows (decode: weight-bandwidth bound, no host sync); per-expert
    # GEMMs otherwise (prefill: compute bound, cuBLAS or the w8a16 kernel per expert).
    if (triton and x.dtype in HALF_DTYPES and x.shape[0]
            and ids.numel() < GROUPED_MM_MIN_ROWS_PER_EXPERT * w13.shape[0]):
        import minimax01.kernels.moe_triton as moe_triton

        if moe_triton.supported(w13.shape[2], w2.shape[2]):
            return "gemv" if x.shape[0] <= GEMV_MAX_TOKENS else "grouped"
    return "per_expert"


def _linear(triton: bool, x: torch.Tensor, weight: torch.Tensor) -> str:
    # Prefill steps on a GPU only: there cuBLAS may sum a row differently with the chunk's row count
    # (linear_triton.py); decode steps and everything else keep cuBLAS.
    ok = (triton and x.is_cuda and bool(_prefill_step.get()) and x.dtype in HALF_DTYPES
          and weight.dtype == x.dtype and x.stride(-1) == 1 and weight.stride(-1) == 1)
    return "triton" if ok else "torch"


def _w8a16_linear(triton: bool, x: torch.Tensor) -> str:
    rows = x.numel() // max(x.shape[-1], 1)
    return "triton" if triton and x.dtype in HALF_DTYPES and rows <= W8A16_TRITON_MAX_M else "torch"


def _paged_decode(triton: bool, q: torch.Tensor, k_cache: torch.Tensor) -> str:
    if not triton or q.dtype not in KERNEL_DTYPES:
        return "torch"
    import minimax01.kernels.paged_attention as paged_attention

    return "triton" if paged_attention.supported(q.shape[-1], k_cache.shape[1]) else "torch"


def _paged_prefill(triton: bool, q: torch.Tensor, k_cache: torch.Tensor) -> str:
    if not triton or q.dtype not in KERNEL_DTYPES:
        return "torch"
    import minimax01.kernels.attention_prefill_triton as prefill

    config = prefill.config_for(q.shape[-1], q.dtype)
    return "triton" if prefill.supported(q.shape[1], k_cache.shape[2], q.shape[-1], config) else "torch"


def _softmax_attention(triton: bool, q: torch.Tensor, is_decode: bool) -> str:
    # Decode on the Triton backend goes through the paged decode op (its kernel, or its device-driven twin for
    # operands the kernel does not take): it reads lengths and slots from device tensors only, as a CUDA graph
    # replayed at other lengths needs. Prefill chunks (and mixed steps) go through the paged prefill op, which
    # reads the pool in place (its kernel) or gathers for SDPA (its twin). Otherwise the host loop over sequences.
    if not triton:
        return "per_sequence"
    return "paged_decode" if is_decode else "paged_prefill"


def _fused(triton: bool, *tensors: torch.Tensor, width: int | None = None) -> str:
    if not triton:
        return "torch"
    import minimax01.kernels.fused_ops as fused_ops

    return "triton" if fused_ops.supported(*tensors, width=width) else "torch"


def _rms_norm(triton: bool, x: torch.Tensor, weight: torch.Tensor) -> str:
    return _fused(triton, x, weight, width=x.shape[-1])


def _rms_norm_gate(triton: bool, x: torch.Tensor, gate_logits: torch.Tensor, weight: torch.Tensor) -> str:
    return _fused(triton, x, gate_logits, weight, width=x.shape[-1])


RULES: dict[str, Callable[..., str]] = {
    "lightning_prefill": _lightning_prefill,  # (q, v, states, max_len)
    "lightning_decode": _lightning,  # (q, v, states)
    "moe_route": _moe_route,  # (logits)
    "moe_experts": _moe_experts,  # (x, ids, w13, w2)
    "moe_experts_int8": _moe_experts_int8,  # (x, ids, w13, w2)
    "linear": _linear,  # (x, weight)
    "w8a16_linear": _w8a16_linear,  # (x)
    "paged_decode_attention": _paged_decode,  # (q, k_cache)
    "paged_prefill_attention": _paged_prefill,  # (q, k_cache)
    "softmax_attention": _softmax_attention,  # (q, is_decode)
    "rms_norm": _rms_norm,  # (x, weight)
    "rms_norm_gate": _rms_norm_gate,  # (x, gate_logits, weight)
    "rope_": _fused,  # (q, k)
    "silu_mul": _fused,  # (h)
}


def select(op: str, first: torch.Tensor, *operands: object) -> str:
    """The implementation of `op` for these operands (the rule's argument list, `first` a tensor on the device
    the op runs on): 'torch' for the reference, 'triton' for the kernel, or a named variant of the op."""
    return RULES[op](use_triton(first.device), first, *operands)
