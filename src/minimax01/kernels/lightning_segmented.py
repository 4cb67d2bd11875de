"""Segmented lightning prefill: more parallelism than one program per (sequence, head) walking the sequence.

Each sequence is cut into segments of `segment` tokens (a multiple of the reference's 256-token block). As the
decay λ = exp(-s) is one scalar per head, the state after a segment of length L is linear in the state before:
    S_out = λ^L · S_in + S_seg,   S_seg = Σ_t λ^(L-1-t) k_tᵀ v_t   (the segment's state from zero)
so the prefill runs in three launches:
1. segment states: `lightning_triton.prefill(state_only=True)` over the segments as if they were sequences,
   from zero states (one program per (segment, head, value block); reads K and V only);
2. scan: per (sequence, head, value block) a short loop over its segments turns S_seg into each segment's
   incoming state S_in (in place) and writes the sequence's final state to its slot;
3. outputs: `lightning_triton.prefill` over the segments again, each from its S_in (reads Q, K, V, writes O).
K and V are read twice (6 bytes/elem of HBM traffic against the floor's 4, vs. the single-walk kernel which
re-reads Q and K once per value block at batch 1), in exchange for T/segment times the programs, which lets
every program take the whole value dim (no QKᵀ recompute) and keeps more loads in flight per SM.
All states are fp32; the result equals the single walk up to the order of the fp32 state sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minimax01.kernels.lightning_triton import prefill
from minimax01.kernels.triton_common import num_sms

SEGMENT_QUANTUM = 256  # segments are whole reference blocks (and whole 64-token kernel chunks)
SCAN_BLOCK_E = 32  # value columns per scan program: [D, 32] fp32 tiles, H·E/32 programs per sequence
# Aim for this many (segment, head) programs per SM in steps 1 and 3 (bench/prefill_kernels.py sweeps it).
PROGRAMS_PER_SM = 4
MAX_SEGMENT = 16384


@triton.jit
def _segment_scan_kernel(
    decay_ptr, seg_cu_ptr, seq_seg_ptr, seg_st_ptr, st_ptr, slot_ptr,
    stride_gs, stride_gh, stride_ss, stride_sh,
    D: tl.constexpr, E: tl.constexpr, BE: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    eb = tl.program_id(2)
    s = tl.load(decay_ptr + h)
    first = tl.load(seq_seg_ptr + b)
    last = tl.load(seq_seg_ptr + b + 1)
    slot = tl.load(slot_ptr + b)
    tile = tl.arange(0, D)[:, None] * E + eb * BE + tl.arange(0, BE)[None, :]  # [D, BE] of a [D, E] state
    st_ptrs = st_ptr + slot * stride_ss + h * stride_sh + tile
    S = tl.load(st_ptrs)  # [D, BE] fp32: the sequence's incoming state
    g_ptrs = seg_st_ptr + first.to(tl.int64) * stride_gs + h * stride_gh + tile  # 64-bit: G·H·D·E > 2^31
    for g in range(first, last):
        length = (tl.load(seg_cu_ptr + g + 1) - tl.load(seg_cu_ptr + g)).to(tl.float32)
        local = tl.load(g_ptrs)  # S_seg
        tl.store(g_ptrs, S)  # becomes the segment's incoming state
        S = S * tl.exp(-s * length) + local
        g_ptrs += stride_gs
    tl.store(st_ptrs, S)


def segment_length(total_tokens: int, heads: int, sms: int) -> int:
    """Segment size: the largest multiple of SEGMENT_QUANTUM (a power of two times it) that still gives about
    PROGRAMS_PER_SM (segment, head) programs per SM; longer segments mean fewer states to write and scan."""
    segment = SEGMENT_QUANTUM
    while segment * 2 <= MAX_SEGMENT and heads * total_tokens / (segment * 2) >= PROGRAMS_PER_SM * sms:
        segment *= 2
    return segment


def segment_plan(cu_seqlens: list[int], segment: int) -> tuple[list[int], list[int]]:
    """Host plan: (segment boundaries [G+1] over the flattened tokens, first segment of each sequence [B+1]).
    An empty sequence gets no segment (its state passes through the scan unchanged)."""
    seg_cu, seq_seg = [cu_seqlens[0]], [0]
    for lo, hi in zip(cu_seqlens, cu_seqlens[1:]):
        seg_cu += list(range(lo + segment, hi, segment)) + ([hi] if hi > lo else [])
        seq_seg.append(len(seg_cu) - 1)
    return seg_cu, seq_seg


def prefill_segmented(
    q: torch.Tensor,  # [T, H, D], last dim contiguous
    k: torch.Tensor,  # [T, H, D]
    v: torch.Tensor,  # [T, H, E]
    decay: torch.Tensor,  # [H] fp32 on q.device
    cu_seqlens: list[int],  # [B+1] host boundaries of each sequence in T
    states: torch.Tensor,  # [slots, H, D, E] fp32, read and written in place
    slots: torch.Tensor,  # [B] int64 on q.device
    segment: int | None = None,  # tokens per segment, a multiple of SEGMENT_QUANTUM (None: segment_length)
    **config: int | bool,  # overrides of lightning_triton.prefill's launch (block_e, num_warps, ...)
) -> torch.Tensor:
    """Lightning prefill by segments; same contract as lightning_triton.prefill: returns o [T, H, E] in q.dtype
    and updates states[slots]."""
    T, H, D = q.shape
    E = v.shape[-1]
    segment = segment or segment_length(T, H, num_sms(q.device))
    if segment % SEGMENT_QUANTUM:
        raise ValueError(f"segment must be a multiple of {SEGMENT_QUANTUM}, got {segment}")
    seg_cu, seq_seg = segment_plan(cu_seqlens, segment)
    G = len(seg_cu) - 1
    plan = torch.tensor(seg_cu + seq_seg, dtype=torch.int32).to(q.device, non_blocking=True)
    seg_cu_t, seq_seg_t = plan[:G + 1], plan[G + 1:]
    seg_slots = torch.arange(G, device=q.device)
    seg_states = torch.zeros(G, H, D, E, dtype=torch.float32, device=q.device)  # [G, H, D, E]
    prefill(q, k, v, decay, seg_cu_t, seg_states, seg_slots, max_len=segment, state_only=True, **config)
    block_e = min(SCAN_BLOCK_E, E)
    _segment_scan_kernel[(len(cu_seqlens) - 1, H, E // block_e)](
        decay, seg_cu_t, seq_seg_t, seg_states, states, slots,
        seg_states.stride(0), seg_states.stride(1), states.stride(0), states.stride(1),
        D=D, E=E, BE=block_e,
    )
    # The outputs' pass writes its final states into seg_states (discarded): the scan already wrote the slots.
    return prefill(q, k, v, decay, seg_cu_t, seg_states, seg_slots, max_len=segment, **config)
