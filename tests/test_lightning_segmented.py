"""Segmented lightning prefill (kernels/lightning_segmented.py) against the fp64 block reference.

Tolerances as in test_kernels.py: fp32 inputs run the same arithmetic in another order (the segment states
are summed per segment, then combined by S = λ^L·S_in + S_seg, instead of one running sum): ‖err‖/‖ref‖ ≤ 1e-5
under the interpreter (fp32 dots) and 5e-3 on CUDA (fp32 dots in tf32: 2^-11 per operand, ~1e-3 after the
K-long sums). A wrong segment boundary, a missing λ^L or a state taken from the wrong segment is an O(1) error.
"""

from __future__ import annotations

import pytest
import torch

from triton_harness import CUDA, DEV, only_where_kernels_run, rel, relaunch_test  # noqa: F401

pytest.importorskip("triton")

from minimax01.kernels import lightning_segmented as seg  # noqa: E402
from minimax01.kernels.lightning_ref import layer_decay_rates, lightning_prefill_ref  # noqa: E402

HEADS, DIM = (64, 128) if CUDA else (2, 16)
FP32_TOL = 5e-3 if CUDA else 1e-5

test_relaunch_under_interpreter = relaunch_test(__file__)


def test_segment_plan() -> None:
    """Segments never cross a sequence boundary; the last one of a sequence takes the remainder."""
    assert seg.segment_plan([0, 600, 600, 856], 256) == ([0, 256, 512, 600, 856], [0, 3, 3, 4])
    assert seg.segment_plan([0, 256], 256) == ([0, 256], [0, 1])


def test_segment_length_rule() -> None:
    """About PROGRAMS_PER_SM (segment, head) programs per SM, in whole 256-token blocks, capped."""
    sms = 132
    for total in (4096, 32768, 131072, 524288):
        s = seg.segment_length(total, 64, sms)
        assert s % seg.SEGMENT_QUANTUM == 0 and s <= seg.MAX_SEGMENT
        assert s == seg.MAX_SEGMENT or 64 * total / s >= seg.PROGRAMS_PER_SM * sms
    assert seg.segment_length(300, 64, sms) == seg.SEGMENT_QUANTUM


@pytest.mark.parametrize("lengths,segment", [
    ([700], 256),  # 3 segments, the last partial (188 tokens: not a multiple of the 64-token chunk)
    ([1100], 512),  # 3 segments
    ([300, 0, 513], 256),  # varlen with an empty sequence: 2 + 0 + 3 segments
    ([256], 256),  # one full segment
])
@pytest.mark.parametrize("with_state", [False, True])
def test_segmented_matches_reference(lengths: list[int], segment: int, with_state: bool) -> None:
    T = sum(lengths)
    g = torch.Generator().manual_seed(T + segment)
    q, k, v = torch.nn.functional.silu(torch.randn(T, HEADS, 3 * DIM, generator=g, dtype=torch.float64)) \
        .float().to(DEV).split(DIM, dim=-1)
    # A deep layer (slow decay) so that incoming states carry across many segments.
    decay = layer_decay_rates(HEADS, 13, 16).to(DEV, torch.float32)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    slots = [2, 0, 1][:len(lengths)]
    states0 = torch.randn(3, HEADS, DIM, DIM, generator=g) if with_state else torch.zeros(3, HEADS, DIM, DIM)
    states = states0.clone().to(DEV)
    out = seg.prefill_segmented(q, k, v, decay, cu, states, torch.tensor(slots, device=DEV), segment=segment)
    for b, slot in enumerate(slots):
        lo, hi = cu[b], cu[b + 1]
        if hi == lo:
            assert torch.equal(states[slot].cpu(), states0[slot])
            continue
        o64, s64 = lightning_prefill_ref(*[t[lo:hi].transpose(0, 1).double() for t in (q, k, v)], decay.double(),
                                         states0[slot].to(DEV).double())
        assert rel(out[lo:hi].transpose(0, 1), o64) <= FP32_TOL, b
        assert rel(states[slot], s64) <= FP32_TOL, b


def test_segment_must_be_whole_blocks() -> None:
    q = torch.zeros(10, HEADS, DIM, device=DEV)
    with pytest.raises(ValueError):
        seg.prefill_segmented(q, q, q, torch.ones(HEADS, device=DEV), [0, 10],
                              torch.zeros(1, HEADS, DIM, DIM, device=DEV), torch.zeros(1, dtype=torch.long, device=DEV),
                              segment=100)



def test_dispatch_runs_segmented(monkeypatch: pytest.MonkeyPatch) -> None:
    """kernels.lightning_prefill takes the segmented path once the rule allows it (host cu_seqlens, slots)."""
    import minimax01.kernels as kernels
    from minimax01.kernels import dispatch

    monkeypatch.setattr(dispatch, "LIGHTNING_SEGMENTED_MIN_LEN", 512)
    calls = []
    real = seg.prefill_segmented
    monkeypatch.setattr(seg, "prefill_segmented", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    cu, slots = [0, 600, 900], [1, 0]
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(900, HEADS, 3 * DIM, generator=g).sigmoid().to(DEV).split(DIM, dim=-1)
    decay = layer_decay_rates(HEADS, 13, 16).to(DEV, torch.float32)
    states = torch.randn(2, HEADS, DIM, DIM, generator=g).to(DEV)
    states0 = states.clone()
    with kernels.use_backend("triton"):
        out = kernels.lightning_prefill(q, k, v, decay, cu, states, slots)
    assert calls == [1]
    for b, slot in enumerate(slots):
        lo, hi = cu[b], cu[b + 1]
        o64, s64 = lightning_prefill_ref(*[t[lo:hi].transpose(0, 1).double() for t in (q, k, v)], decay.double(),
                                         states0[slot].double())
        assert rel(out[lo:hi].transpose(0, 1), o64) <= FP32_TOL
        assert rel(states[slot], s64) <= FP32_TOL
