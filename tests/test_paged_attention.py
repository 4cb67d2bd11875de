"""Triton paged decode attention against its torch twin (`attention_ref.paged_decode_ref`: gather + `attend_one`).

Runs under TRITON_INTERPRET=1 on CPU (re-running itself in a subprocess when triton was imported before the
variable could be set, as tests/triton_harness.py explains), compiled on CUDA. Skipped where Triton cannot import.

Oracle: the torch twin in fp64. Tolerances: fp32 inputs — same arithmetic in another order (online softmax,
split reduction), ‖err‖/‖ref‖ ≤ 1e-5 on CPU; on CUDA fp32 dots run in tf32 (2^-11 relative per operand), held to
5e-3. 16-bit inputs — the kernel rounds the softmax weights p to the input dtype before P·V (as flash kernels
do), a few units of 2^-9 (bf16) / 2^-12 (fp16) relative: it passes at ≤ 2× the torch twin's own error in that
dtype plus 1e-3. A wrong block lookup, kv head or split combination is an O(1) error.
"""

from __future__ import annotations

import pytest
import torch

from triton_harness import CUDA, DEV, only_where_kernels_run, rel, relaunch_test, triton_backend  # noqa: F401

pytest.importorskip("triton")

import minimax01.kernels as kernels  # noqa: E402
from minimax01.cache import BatchInfo, StateStore  # noqa: E402
from minimax01.config import FULL, LINEAR, MiniMaxConfig  # noqa: E402
from minimax01.kernels import paged_attention  # noqa: E402
from minimax01.kernels.attention_ref import paged_decode_ref  # noqa: E402
from minimax01.model.attention import SoftmaxAttention  # noqa: E402

HEADS, KV_HEADS, DIM = (64, 8, 128) if CUDA else (8, 2, 32)  # GQA group of 4 on CPU, 8 on the GPU
FP32_TOL = 5e-3 if CUDA else 1e-5


test_relaunch_under_interpreter = relaunch_test(__file__)


def runner_config() -> MiniMaxConfig:
    """The tiny preset cut to one lightning and one softmax layer on CPU: every kernel of a decode step still
    runs, at an eighth of the 16-layer model's cost under the Triton interpreter (the whole preset on CUDA)."""
    config = MiniMaxConfig.preset("tiny")
    if not CUDA:
        config.num_hidden_layers, config.attn_type_list = 2, [LINEAR, FULL]
        config.validate()
    return config


def paged_case(lens: list[int], block_size: int, dtype: torch.dtype, seed: int = 0):
    """A pool holding sequences of `lens` tokens in a shuffled (fragmented) set of blocks, slots out of order.
    Returns q [B, H, D], k/v pools [blocks, BS, KVH, D], block table [slots, width] int32, slots, seq_lens."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in lens]
    blocks = sum(need) + 3  # spare blocks the table never points at
    perm = torch.randperm(blocks, generator=g)
    slots = torch.randperm(len(lens) + 2, generator=g)[: len(lens)]
    table = torch.full((len(lens) + 2, max(need + [1]) + 2), -1, dtype=torch.int32)  # -1: never read
    used = 0
    for slot, n in zip(slots.tolist(), need):
        table[slot, :n] = perm[used:used + n].int()
        used += n
    shape = (blocks, block_size, KV_HEADS, DIM)
    k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    q = torch.randn(len(lens), HEADS, DIM, generator=g, dtype=torch.float64) * 2  # peaky enough softmax
    return (q.to(dtype).to(DEV), k.to(dtype).to(DEV), v.to(dtype).to(DEV), table.to(DEV), slots.to(DEV),
            torch.tensor(lens, dtype=torch.int64, device=DEV))


def check(q, k, v, table, slots, lens, scale, **decode_kw) -> None:
    out = paged_attention.decode(q, k, v, table, slots, lens, scale, **decode_kw)
    ref64 = paged_decode_ref(q.double(), k.double(), v.double(), table, slots, lens, scale)
    if q.dtype == torch.float32:
        tol = FP32_TOL
    else:
        tol = 2 * rel(paged_decode_ref(q, k, v, table, slots, lens, scale), ref64) + 1e-3
    assert out.dtype == q.dtype and out.shape == q.shape
    assert rel(out, ref64) <= tol, (rel(out, ref64), tol, decode_kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_reference_varlen_fragmented(dtype: torch.dtype) -> None:
    # Lengths: one token, shorter than a block, block multiple, ragged tails over several blocks/tiles.
    lens = [1, 3, 32, 45, 130] if not CUDA else [1, 3, 64, 1000, 4100]
    block_size = 16
    q, k, v, table, slots, lens_t = paged_case(lens, block_size, dtype)
    check(q, k, v, table, slots, lens_t, DIM ** -0.5, block_n=16 if not CUDA else 64)


def test_splits_and_tiles_agree() -> None:
    """One split, more splits than tiles (empty programs), tiles spanning several blocks (block size 4 < 16
    tokens per tile) or a block larger than a tile: the combination of partials is exact up to rounding."""
    lens = [7, 50, 21] if not CUDA else [7, 5000, 300]
    for block_size, block_n in ((4, 16), (32, 16)):
        case = paged_case(lens, block_size, torch.float32, seed=block_size)
        for splits in (1, 3, 8):
            check(*case, 0.3, block_n=block_n, splits=splits)


def test_empty_sequence_gives_zeros() -> None:
    """A padding sequence (length 0, as a CUDA-graph batch pads with) yields zeros, not NaN, and leaves the
    others unchanged."""
    q, k, v, table, slots, lens = paged_case([9, 0, 20], 8, torch.float32)
    out = paged_attention.decode(q, k, v, table, slots, lens, 0.2, block_n=16, splits=2)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    ref = paged_decode_ref(q.double(), k.double(), v.double(), table, slots, lens, 0.2)
    assert rel(out, ref) <= FP32_TOL


def test_num_splits_heuristic() -> None:
    assert paged_attention.num_splits(1, 8, None, 132, 64) == 33  # batch 1: ~2 programs per SM
    assert paged_attention.num_splits(1, 8, 4096, 132, 64) == 16  # no split under 4 tiles
    assert paged_attention.num_splits(64, 8, 4096, 132, 64) == 1  # the batch fills the GPU


def test_store_block_table_tracks_prepare() -> None:
    """block_table_t mirrors block_tables for interleaved growth (fragmented pools) and widens on demand."""
    config = MiniMaxConfig.preset("tiny")
    store = StateStore(config, max_seqs=3, device=DEV, kv_block_size=4)
    a, b = store.allocate(), store.allocate()
    steps = [((a, 0, 6), (b, 0, 3)), ((a, 6, 1), (b, 3, 70)), ((a, 7, 2),)]
    for step in steps:
        batch = BatchInfo(slots=[s for s, _, _ in step], start_pos=[p for _, p, _ in step],
                          num_new=[n for _, _, n in step], device=DEV)
        store.prepare(batch)
        store.commit(batch)
    assert store.block_table_t.shape[1] >= len(store.block_tables[b]) > 16  # widened past the initial 16
    for slot in (a, b):
        table = store.block_tables[slot]
        assert store.block_table_t[slot, :len(table)].tolist() == table


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_softmax_layer_decode_uses_kernel(dtype: torch.dtype) -> None:
    """SoftmaxAttention's decode step on the Triton backend (paged kernel) equals the torch backend
    (gather + attend_one) for three sequences of different lengths in a store with small blocks."""
    config = MiniMaxConfig.preset("tiny")
    layer_idx = config.full_layers[0]
    torch.manual_seed(0)
    layer = SoftmaxAttention(config, layer_idx).to(DEV, dtype)
    store = StateStore(config, max_seqs=4, device=DEV, dtype=dtype, kv_block_size=4)
    slots = [store.allocate() for _ in range(3)]
    with kernels.use_backend("torch"):
        lens = [5, 13, 2]
        first = [min(n, 2) for n in lens]
        for starts, news in (([0] * 3, first), (first, [n - f for n, f in zip(lens, first)])):
            # two prefill chunks: the slots' blocks interleave in the pool
            batch = BatchInfo(slots=slots, start_pos=starts, num_new=news, device=DEV)
            x = torch.randn(batch.num_tokens, config.hidden_size, dtype=dtype, device=DEV)
            layer(x, batch, store, store.prepare(batch))
            store.commit(batch)
        batch = BatchInfo(slots=slots, start_pos=lens, num_new=[1, 1, 1], device=DEV)
        kv_pos = store.prepare(batch)
        x = torch.randn(3, config.hidden_size, dtype=dtype, device=DEV)
        ref = layer(x, batch, store, kv_pos)
    with kernels.use_backend("triton"):
        out = layer(x, batch, store, kv_pos)
    # fp32: reordered sums; bf16: p rounded to bf16 in the kernel, then o_proj in bf16 (a few 2^-9).
    assert rel(out, ref) <= (FP32_TOL if dtype == torch.float32 else 2e-2)


# ------------------------------------------------------------------ CUDA-graph decode runner


GRAPH_CASES = [(False, torch.float32)] + ([(True, torch.float32), (True, torch.bfloat16)] if CUDA else [])


@pytest.mark.parametrize("capture,dtype", GRAPH_CASES)
@torch.no_grad()
def test_decode_runner_padding_matches_step(capture: bool, dtype: torch.dtype, triton_backend: None) -> None:
    """DecodeGraphRunner's static-buffer step for 3 sequences padded to a graph of 4 — replayed from captured
    CUDA graphs on the GPU, run eagerly (capture=False) everywhere — gives the same logits as
    model.step on an identical store, advances the store, and declines prefill steps and batches larger
        than its graphs. fp32 runs the torch experts (capture: their sync-free twin). Tolerances: fp32, only the
    padding rows and the paged attention's split count (no host length hint in the runner's batches) differ:
    reordered sums, 1e-5 on CPU; on the GPU fp32 Triton dots run in tf32 (FP32_TOL); bf16 adds a few 2^-9
    roundings of a different split reduction (2e-2)."""
    from conftest import make_model, random_ids

    from minimax01.engine.cuda_graph import DecodeGraphRunner

    config = runner_config()
    model = make_model(config, dtype=dtype).to(DEV)
    runner = DecodeGraphRunner(model, max_model_len=64, sizes=(1, 2, 4), capture=capture)
    stores = [m.new_store(4, num_kv_blocks=30, kv_block_size=4) for m in (runner, model)]
    tol = FP32_TOL if dtype == torch.float32 else 2e-2
    assert runner.sizes == (1, 2, 4) and runner.size_for(3) == 4 and runner.size_for(5) is None
    lens = [5, 9, 2]
    slots = [[s.allocate() for _ in lens] for s in stores]
    prompt = random_ids(1, sum(lens), config.vocab_size, seed=5)[0].to(DEV)
    for store, sl in zip(stores, slots):
        batch = BatchInfo(sl, [0] * 3, lens, device=DEV)
        assert runner.replay(prompt, batch) is None  # not a decode step: left to model.step
        model.step(prompt, batch, store)
    for step in range(2):
        tokens = random_ids(1, 3, config.vocab_size, seed=6 + step)[0].to(DEV)
        pos = [n + step for n in lens]
        got = runner.replay(tokens, BatchInfo(slots[0], pos, [1] * 3, device=DEV))
        ref = model.step(tokens, BatchInfo(slots[1], pos, [1] * 3, device=DEV), stores[1])
        assert got.shape == ref.shape and rel(got, ref) <= tol, rel(got, ref)
    assert [stores[0].seq_lens[s] for s in slots[0]] == [n + 2 for n in lens]
    assert runner.capture == capture and (sorted(runner.graphs) == [4] if capture else not runner.graphs)
    # release() (before a sharded world's process group goes) drops the graphs and the store: no more replays.
    assert runner.batches
    runner.release()
    assert runner.store is None and not runner.graphs and not runner.batches and runner.pool is None
    assert runner.replay(tokens, BatchInfo(slots[0], [n + 2 for n in lens], [1] * 3, device=DEV)) is None


@torch.no_grad()
def test_engine_decodes_through_the_runner(triton_backend: None) -> None:
    """LLMEngine(cuda_graphs=True) sends its pure-decode steps through the runner (eager off CUDA) and
    generates the same greedy tokens as without it: two requests decode together (graph size 2), then the
    longer one alone (size 1)."""
    from conftest import make_model, random_ids

    from minimax01.engine import LLMEngine
    from minimax01.sampling_params import SamplingParams

    model = make_model(runner_config(), dtype=torch.float32).to(DEV)
    prompts = [random_ids(1, n, 512, seed=n)[0].tolist() for n in (7, 3)]
    results = []
    for graphs in (True, False):
        eng = LLMEngine(model, max_num_seqs=3, max_model_len=32, kv_block_size=4, cuda_graphs=graphs)
        assert (eng.graphs is not None) == graphs
        if graphs and CUDA:  # every size captured at start: no request waits for a capture
            assert sorted(eng.graphs.graphs) == list(eng.graphs.sizes)
        ids = [eng.add_request(p, SamplingParams(temperature=0.0, max_new_tokens=n))
               for p, n in zip(prompts, (4, 2))]
        outs: dict[str, list[int]] = {i: [] for i in ids}
        while eng.has_unfinished():
            for o in eng.step():
                outs[o.request_id] += o.new_token_ids
        results.append([outs[i] for i in ids])
        if graphs:
            assert eng.graphs.batches, "no decode step went through the runner"
    assert results[0] == results[1]
