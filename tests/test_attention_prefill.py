"""Triton paged prefill attention (`kernels/attention_prefill_triton.py`) against its torch twin
(`attention_ref.paged_attention_ref`: gather each sequence's K/V through the block table + `attend_one`).

Runs under TRITON_INTERPRET=1 on CPU at tiny shapes (re-running itself in a subprocess when triton was imported
before the variable could be set, tests/triton_harness.py), compiled on CUDA at the model's shapes.

Oracle: the torch twin in fp64. Tolerances: fp32 inputs — the same arithmetic in another order (online softmax
over tiles), ‖err‖/‖ref‖ ≤ 1e-5 on CPU; on CUDA fp32 dots run in tf32 (2^-11 relative per operand): 5e-3.
16-bit inputs — the kernel rounds p to the input dtype before P·V as flash kernels do: ≤ 2× the torch twin's own
error in that dtype + 1e-3. A wrong block lookup, kv head, row packing or diagonal is an O(1) error.
"""

from __future__ import annotations

import pytest
import torch

from triton_harness import CUDA, DEV, only_where_kernels_run, rel, relaunch_test, triton_backend  # noqa: F401

pytest.importorskip("triton")

import minimax01.kernels as kernels  # noqa: E402
from minimax01.cache import BatchInfo, StateStore  # noqa: E402
from minimax01.config import MiniMaxConfig  # noqa: E402
from minimax01.kernels import attention_prefill_triton as prefill  # noqa: E402
from minimax01.kernels.attention_ref import paged_attention_ref  # noqa: E402
from minimax01.model.attention import SoftmaxAttention  # noqa: E402

HEADS, KV_HEADS, DIM = (64, 8, 128) if CUDA else (4, 2, 16)
FP32_TOL = 5e-3 if CUDA else 1e-5
# Tiny tiles under the interpreter (BM = 16 rows = 8 tokens × G = 2 heads) so that a short chunk spans several
# query tiles and several diagonal tiles; the model's table on CUDA.
CPU_CONFIGS = [prefill.PrefillConfig(16, 16, 4, 1), prefill.PrefillConfig(32, 16, 4, 1)]
# CUDA: the table's config and its TMA variant (full tiles through descriptors; block size 64 = BN).
HALF_CONFIGS = [CPU_CONFIGS[0]] if not CUDA else [None, prefill.PrefillConfig(128, 64, 8, 3, tma=True)]

test_relaunch_under_interpreter = relaunch_test(__file__)


def paged_case(lens: list[int], chunks: list[int], block_size: int, dtype: torch.dtype, seed: int = 0):
    """Sequences of `lens` keys whose last `chunks` tokens are this step's queries, their K/V in a shuffled
    (fragmented) set of pool blocks, slots out of order. Returns q [T, H, D], k/v pools, block table, slots
    (host list and device tensor), cu_seqlens."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in lens]
    blocks = sum(need) + 3
    perm = torch.randperm(blocks, generator=g)
    slots = torch.randperm(len(lens) + 2, generator=g)[: len(lens)]
    table = torch.full((len(lens) + 2, max(need) + 2), -1, dtype=torch.int32)  # -1: never read
    used = 0
    for slot, n in zip(slots.tolist(), need):
        table[slot, :n] = perm[used:used + n].int()
        used += n
    shape = (blocks, block_size, KV_HEADS, DIM)
    k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    cu = [0]
    for n in chunks:
        cu.append(cu[-1] + n)
    q = torch.randn(cu[-1], HEADS, DIM, generator=g, dtype=torch.float64) * 2  # peaky enough softmax
    return (q.to(dtype).to(DEV), k.to(dtype).to(DEV), v.to(dtype).to(DEV), table.to(DEV), slots.tolist(),
            slots.to(DEV), cu)


def check(lens: list[int], chunks: list[int], block_size: int, dtype: torch.dtype,
          config: prefill.PrefillConfig | None) -> None:
    q, k, v, table, slots, slots_t, cu = paged_case(lens, chunks, block_size, dtype)
    scale = DIM ** -0.5
    out = prefill.prefill(q, k, v, table, slots_t, cu, lens, scale, config=config)
    ref64 = paged_attention_ref(q.double(), k.double(), v.double(), table, slots, cu, lens, scale)
    if dtype == torch.float32:
        tol = FP32_TOL
    else:
        tol = 2 * rel(paged_attention_ref(q, k, v, table, slots, cu, lens, scale), ref64) + 1e-3
    assert out.dtype == q.dtype and out.shape == q.shape
    assert rel(out, ref64) <= tol, (rel(out, ref64), tol, config)


# Sequences: a chunk that is the whole prompt, a continuation chunk not aligned to blocks or tiles, a chunk much
# shorter than its context, a one-query chunk (a decode token in a mixed step).
LENS, CHUNKS = ([21, 70, 13, 40], [21, 11, 5, 1]) if not CUDA else ([700, 5000, 3000, 40], [700, 1300, 77, 1])


@pytest.mark.parametrize("config", CPU_CONFIGS if not CUDA else [None])
@pytest.mark.parametrize("block_size", [16, 6] if not CUDA else [64, 48])  # BN divides it / per-row lookup
def test_matches_reference_varlen_fp32(config: prefill.PrefillConfig | None, block_size: int) -> None:
    check(LENS, CHUNKS, block_size, torch.float32, config)


@pytest.mark.parametrize("config", HALF_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference_half(dtype: torch.dtype, config: prefill.PrefillConfig | None) -> None:
    check(LENS, CHUNKS, 16 if not CUDA else 64, dtype, config)


# The options the bench sweep explores (BN ≠ BM, V loaded early, scale in the exponent's FMA, warp-specialized
# full-tile loop, blocks looked up a tile ahead; tiny tiles and the model's tile sides), on contexts long enough
# that the full-tile loop runs several tiles: block size 64 holds a whole BN ≤ 64 tile (one table lookup per
# tile), 48 does not (one per row).
Config = prefill.PrefillConfig
OPTION_CONFIGS = [Config(16, 32, 4, 1), Config(32, 16, 4, 1, v_early=True, exp_fma=True),
                  Config(16, 16, 4, 1, warp_specialize=True, block_ahead=True),
                  Config(128, 128, 8, 3, exp_fma=True, block_ahead=True), Config(256, 64, 8, 3, v_early=True),
                  Config(128, 64, 8, 3, warp_specialize=True, v_early=True), Config(128, 64, 8, 3, block_ahead=True)]
OPTIONS = ("v_early", "exp_fma", "warp_specialize", "block_ahead")


def config_id(c: prefill.PrefillConfig) -> str:
    return f"{c.block_m}x{c.block_n}" + "".join(f"-{k}" for k in OPTIONS if getattr(c, k))


@pytest.mark.parametrize("config", OPTION_CONFIGS, ids=config_id)
@pytest.mark.parametrize("block_size", [64, 48])
def test_config_options_match_reference(config: prefill.PrefillConfig, block_size: int) -> None:
    if config.warp_specialize and not prefill.supported(HEADS, KV_HEADS, DIM, config):
        pytest.skip("this Triton's tl.range has no warp_specialize")
    if CUDA and config.warp_specialize:
        pytest.skip("compiled warp specialization: the bench sweep times it and checks it (or records its error)")
    lens, chunks = ([300, 140, 9], [40, 3, 9]) if not CUDA else ([9000, 3000], [700, 1])
    if not CUDA:  # compiled, these 16-bit tile sides hold twice the bytes in fp32: 256-448 KiB of shared memory
        check(lens, chunks, block_size, torch.float32, config)  # on an H200 (232 KiB): fp32 has its own CONFIGS
    check(lens, chunks, block_size, torch.bfloat16, config)


def test_supported_shapes() -> None:
    cfg = prefill.PrefillConfig(128, 64, 8, 3)
    assert prefill.supported(64, 8, 128, cfg)
    assert not prefill.supported(64, 8, 96, cfg)  # head dim not a power of two
    assert not prefill.supported(12, 4, 128, cfg)  # group of 3
    assert not prefill.supported(64, 8, 128, prefill.PrefillConfig(4, 64, 8, 3))  # BM below the group
    assert not prefill.supported(64, 8, 128, prefill.PrefillConfig(128, 96, 8, 3))  # BN not a power of two
    assert not prefill.supported(64, 8, 128, prefill.PrefillConfig(128, 8, 8, 3))  # BN below tl.dot's 16


def test_tile_schedule_heaviest_first() -> None:
    seq, q0 = prefill.tile_schedule([0, 3, 20], [3, 100], 8, torch.device("cpu"))
    # sequence 1: 17 queries at positions 83..99 in tiles of 8; sequence 0: one tile ending at key 3
    assert list(zip(seq.tolist(), q0.tolist())) == [(1, 16), (1, 8), (1, 0), (0, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_softmax_layer_prefill_uses_kernel(dtype: torch.dtype) -> None:
    """SoftmaxAttention's chunked prefill on the Triton backend (the paged prefill kernel in a mixed varlen step)
    equals the torch backend (gather + attend_one) on the same store."""
    config = MiniMaxConfig.preset("tiny")
    layer_idx = config.full_layers[0]
    torch.manual_seed(0)
    layer = SoftmaxAttention(config, layer_idx).to(DEV, dtype)
    store = StateStore(config, max_seqs=4, device=DEV, dtype=dtype, kv_block_size=4)
    slots = [store.allocate() for _ in range(3)]
    with kernels.use_backend("torch"):
        batch = BatchInfo(slots=slots, start_pos=[0] * 3, num_new=[6, 9, 2], device=DEV)
        layer(torch.randn(batch.num_tokens, config.hidden_size, dtype=dtype, device=DEV), batch, store,
              store.prepare(batch))
        store.commit(batch)
    batch = BatchInfo(slots=slots, start_pos=[6, 9, 2], num_new=[5, 1, 7], device=DEV)
    kv_pos = store.prepare(batch)
    x = torch.randn(batch.num_tokens, config.hidden_size, dtype=dtype, device=DEV)
    with kernels.use_backend("torch"):
        assert kernels.dispatch.select("softmax_attention", x, batch.is_decode) == "per_sequence"
        ref = layer(x, batch, store, kv_pos)
    with kernels.use_backend("triton"):
        assert kernels.dispatch.select("softmax_attention", x, batch.is_decode) == "paged_prefill"
        out = layer(x, batch, store, kv_pos)
    # fp32: reordered sums; bf16: p rounded to bf16 in the kernel, then o_proj in bf16 (a few 2^-9).
    assert rel(out, ref) <= (FP32_TOL if dtype == torch.float32 else 2e-2)
