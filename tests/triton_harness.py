"""Shared setup of the Triton kernel test modules (test_kernels.py, test_paged_attention.py).

On a machine without CUDA the kernels run under Triton's interpreter (TRITON_INTERPRET=1). @triton.jit picks
the interpreter when it decorates, triton.language's own helpers included, so the variable must be set before
triton is first imported: import this module before triton or minimax01.kernels. If triton was already
imported without it (another module of the package imports triton eagerly), RELAUNCH is true: the module's
tests are skipped in this process and `relaunch_test(__file__)` re-runs the module in a fresh interpreter with
the variable set. On CUDA the kernels run compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
RELAUNCH = not CUDA and os.environ.get("TRITON_INTERPRET") != "1"
DEV = torch.device("cuda" if CUDA else "cpu")
RELAUNCH_TEST = "test_relaunch_under_interpreter"


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖ in fp64 on the CPU; non-finite output fails."""
    a, ref = a.double().cpu(), ref.double().cpu()
    assert torch.isfinite(a).all(), "non-finite output"
    return float((a - ref).norm() / ref.norm())


def check_lightning_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, cu: list[int],
                            slots: list[int], states0: torch.Tensor, states: torch.Tensor, out: torch.Tensor | None,
                            fp32_tol: float, bf16_factor: float, context: object = None) -> None:
    """A varlen lightning prefill against the fp64 block reference, sequence by sequence: sequence b is rows
    cu[b]:cu[b+1] of q, k, v [T, H, D] (and of out), its state went from states0[slots[b]] to states[slots[b]].
    Tolerance, ‖err‖/‖ref‖: fp32 inputs `fp32_tol`; 16-bit inputs `bf16_factor` × the error of the reference
    itself run in that dtype, + 1e-4. out None: the states alone."""
    from minimax01.kernels.lightning_ref import lightning_prefill_ref

    for b, slot in enumerate(slots):
        lo, hi = cu[b], cu[b + 1]
        args = [t[lo:hi].transpose(0, 1) for t in (q, k, v)]
        o64, s64 = lightning_prefill_ref(*[a.double() for a in args], decay, states0[slot].double())
        o_ref, s_ref = lightning_prefill_ref(*args, decay, states0[slot])  # the reference in the inputs' dtype
        tol_o = fp32_tol if q.dtype == torch.float32 else bf16_factor * rel(o_ref, o64) + 1e-4
        tol_s = fp32_tol if q.dtype == torch.float32 else bf16_factor * rel(s_ref, s64) + 1e-4
        if out is not None and hi > lo:
            err = rel(out[lo:hi].transpose(0, 1), o64)
            assert err <= tol_o, (context, b, err, tol_o)
        err = rel(states[slot], s64)
        assert err <= tol_s, (context, b, err, tol_s)


@pytest.fixture(autouse=True)
def only_where_kernels_run(request: pytest.FixtureRequest) -> None:
    """Imported into a test module: skips its tests in a process whose triton is not in interpreter mode."""
    if RELAUNCH and request.node.name != RELAUNCH_TEST:
        pytest.skip(f"runs in the TRITON_INTERPRET=1 subprocess of {RELAUNCH_TEST}")


@pytest.fixture
def triton_backend() -> Iterator[None]:
    """Route the public dispatch functions to Triton for the test, whatever the device."""
    import minimax01.kernels as kernels

    with kernels.use_backend("triton"):
        yield


def prefill_decode_logits(model, ids: torch.Tensor, mask: torch.Tensor,  # noqa: ANN001
                          steps: torch.Tensor) -> torch.Tensor:
    """Logits of every real prompt token of a left-padded varlen prefill (`ids`, `mask` [B, n]) and of each
    decode step (`steps` [B, s]) through the model's 2-D call: [tokens, vocab] fp64."""
    out = model(ids, attention_mask=mask)
    got = [out.logits[mask.bool()]]
    for t in range(steps.shape[1]):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(steps[:, t:t + 1], attention_mask=mask, cache=out.cache)
        got.append(out.logits[:, -1])
    return torch.cat(got).double()


def relaunch_test(test_file: str) -> Callable[[], None]:
    """The module's `test_relaunch_under_interpreter`: runs `test_file` under TRITON_INTERPRET=1."""

    @pytest.mark.skipif(not RELAUNCH, reason="this process already runs the kernels")
    def test_relaunch_under_interpreter() -> None:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        # The interpreter's speed is the machine's: a busy 2-core machine needs minutes per module. The limit
        # only catches a hang; the time is reported.
        start = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider"],
                             env=env, capture_output=True, text=True, timeout=3600)
        took = f"\n[{os.path.basename(test_file)} under the interpreter: {time.monotonic() - start:.0f} s]"
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:] + took

    return test_relaunch_under_interpreter
