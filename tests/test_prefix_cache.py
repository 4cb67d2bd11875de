"""Prefix caching (engine/prefix_cache.py): a cached prefix must give what prefilling it gives.

The oracle is the same engine with prefix caching off. Greedy tokens must be equal; logprobs of the sampled tokens
(fp32 model) within 1e-5: restored and fresh runs add the same lightning blocks to the same fp32 states, but
the fresh run computes the prefix's projections in a batch of other rows, and a GEMM may order a row's sums
differently with the batch shape (fp32 rounding of sums of ~64 products is ~1e-7 relative, on logits of size
~1-10). A wrong restore (state of another position, a foreign prefix) moves logprobs by far more: the
`sensitivity` tests show that the same checks fail then.

Every test ends with `check_refs`: each KV block is held exactly by the slot tables that list it plus the cache,
free blocks by nobody, and no snapshot is left claimed: aborts and preemption leave no dangling reference.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import make_model

from minimax01.config import MiniMaxConfig
from minimax01.engine import LLMEngine
from minimax01.engine.prefix_cache import PrefixCache, PrefixHit
from minimax01.sampling import SamplingParams

PAGE = 16  # KV page; unit = lcm(256, 16) = 256
INTERVAL = 256
LOGPROB_TOL = 1e-5


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def engine(model: torch.nn.Module, caching: bool = True, **kw) -> LLMEngine:  # noqa: ANN003
    kw.setdefault("max_model_len", 2048)
    return LLMEngine(model, kv_block_size=PAGE, prefix_caching=caching, prefix_snapshot_interval=INTERVAL, **kw)


def greedy(n: int = 6) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=n, logprobs=0)


def run_all(eng: LLMEngine, prompts: list[list[int]], n: int = 6, max_steps: int = 2000) -> list[dict]:
    """Adds every prompt at once, steps until done; per prompt: tokens, logprobs, cached_tokens."""
    rids = [eng.add_request(p, greedy(n)) for p in prompts]
    res = {r: {"tokens": [], "logprobs": [], "cached": None} for r in rids}
    for _ in range(max_steps):
        if not eng.has_unfinished():
            break
        for o in eng.step():
            r = res[o.request_id]
            r["tokens"] += o.new_token_ids
            r["logprobs"] += o.logprobs or []
            r["cached"] = o.cached_tokens
    assert not eng.has_unfinished()
    check_refs(eng)
    return [res[r] for r in rids]


def one_by_one(eng: LLMEngine, prompts: list[list[int]], n: int = 6) -> list[dict]:
    return [run_all(eng, [p], n)[0] for p in prompts]


def check_refs(eng: LLMEngine) -> None:
    store, cache = eng.store, eng.prefix_cache
    held = Counter(b for table in store.block_tables.values() for b in table)
    if cache is not None:
        kept = [e.kv_block for e in cache.blocks.values() if e.kv_block is not None]
        held.update(kept)
        assert set(kept) == store.kept_blocks
        assert store.num_idle_kept == sum(store.block_refs[b] == 1 for b in kept)
        assert not cache.pending or eng.has_unfinished()
    assert all(store.block_refs[b] == held.get(b, 0) for b in range(store.num_kv_blocks))
    assert sorted(store.free_blocks) == [b for b in range(store.num_kv_blocks) if held.get(b, 0) == 0]


def assert_same(got: list[dict], want: list[dict]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g["tokens"] == w["tokens"]
        assert max(abs(a - b) for a, b in zip(g["logprobs"], w["logprobs"], strict=True)) <= LOGPROB_TOL


def conversation(turns: int = 3, seed: int = 0) -> list[list[int]]:
    """Prompts of a chat: a 600-token system prompt, then turns of 840 and 1280 tokens (each appends its reply and
    a message to the one before)."""
    prompts = [ids(600, seed)]
    for t in range(1, turns):
        prompts.append(prompts[-1] + ids(40 + 200 * t, seed + t))
    return prompts


@pytest.fixture(scope="module")
def cfg() -> MiniMaxConfig:
    return MiniMaxConfig.preset("tiny")


# ---------------------------------------------------------------------- keys
def test_block_keys_name_the_whole_prefix(model: torch.nn.Module, cfg: MiniMaxConfig) -> None:
    store = model.new_store(1, num_kv_blocks=8, kv_block_size=PAGE)
    cache = PrefixCache(store, cfg.block_size, INTERVAL, 1 << 20, salt="a")
    base = ids(4 * PAGE, 0)
    keys, same, head, tail = [], [], [], []
    cache.extend_keys(base, keys)
    cache.extend_keys(list(base), same)
    cache.extend_keys([base[0] + 1] + base[1:], head)  # first token differs: every later key too
    cache.extend_keys(base[:2 * PAGE] + [base[2 * PAGE] + 1] + base[2 * PAGE + 1:], tail)
    assert len(keys) == 4 and keys == same
    assert all(a != b for a, b in zip(keys, head))
    assert tail[:2] == keys[:2] and all(a != b for a, b in zip(keys[2:], tail[2:]))
    salted = []
    PrefixCache(store, cfg.block_size, INTERVAL, 1 << 20, salt="b").extend_keys(base, salted)
    assert all(a != b for a, b in zip(keys, salted))
    partial = []
    cache.extend_keys(base[:PAGE + 3], partial)  # a partly filled last block has no key
    assert partial == keys[:1]


def test_interval_must_keep_restore_points_aligned(model: torch.nn.Module, cfg: MiniMaxConfig) -> None:
    store = model.new_store(1, num_kv_blocks=8, kv_block_size=PAGE)
    with pytest.raises(ValueError, match="multiple of 256"):
        PrefixCache(store, cfg.block_size, 384, 1 << 20, salt="")


# ---------------------------------------------------------------------- exactness
def test_multi_turn_matches_caching_off(model: torch.nn.Module) -> None:
    prompts = conversation()
    on = one_by_one(engine(model), prompts)
    off = one_by_one(engine(model, caching=False), prompts)
    assert_same(on, off)
    # Turn 1 is cold; later turns restore at the last multiple of 256 of the turn before (600 -> 512, 840 -> 768).
    assert [r["cached"] for r in on] == [0, 512, 768]
    assert all(r["cached"] == 0 for r in off)


def test_bf16_greedy_tokens_match(cfg: MiniMaxConfig) -> None:
    bf16 = make_model(cfg, dtype=torch.bfloat16)
    prompts = conversation(seed=5)
    on = one_by_one(engine(bf16), prompts)
    off = one_by_one(engine(bf16, caching=False), prompts)
    assert [r["tokens"] for r in on] == [r["tokens"] for r in off]
    assert on[-1]["cached"] > 0


def test_same_prompt_twice_restores_the_last_snapshot_before_its_end(model: torch.nn.Module) -> None:
    p = ids(512, 3)  # ends exactly at a snapshot position: the hit must leave its last token to compute
    eng = engine(model)
    first, second = one_by_one(eng, [p, p])
    assert (first["cached"], second["cached"]) == (0, 256)
    assert_same([second], [first])


def test_sensitivity_a_wrong_snapshot_is_caught(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restoring the lightning states of another position (the snapshot one interval earlier) must fail the
    same comparison that the exactness tests make."""
    prompts = conversation(seed=7)
    off = one_by_one(engine(model, caching=False), prompts)
    lookup = PrefixCache.lookup

    def wrong_position(self: PrefixCache, tokens: list[int], keys: list[bytes]) -> PrefixHit:
        hit = lookup(self, tokens, keys)
        earlier = (hit.length - self.unit) // self.block_size - 1
        if hit.length > self.unit and keys[earlier] in self.snapshots:
            return PrefixHit(hit.length, hit.kv_blocks, self.snapshots.get(keys[earlier]))
        return hit

    monkeypatch.setattr(PrefixCache, "lookup", wrong_position)
    on = one_by_one(engine(model), prompts)
    assert on[-1]["cached"] == 768
    assert max(abs(a - b) for a, b in zip(on[-1]["logprobs"], off[-1]["logprobs"])) > 100 * LOGPROB_TOL


# ---------------------------------------------------------------------- collisions
def test_equal_length_prefixes_do_not_share(model: torch.nn.Module) -> None:
    a = ids(700, 11)
    b = [a[0] + 1] + a[1:]  # same length, same tokens but the first
    on = one_by_one(engine(model), [a, b])
    off = one_by_one(engine(model, caching=False), [a, b])
    assert [r["cached"] for r in on] == [0, 0]
    assert_same(on, off)


def test_a_hash_collision_cannot_hand_out_a_foreign_prefix(model: torch.nn.Module,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With a hash that only sees the block index (every prefix of equal length collides), the tokens kept with
    each entry still refuse the foreign prefix."""

    def colliding(self: PrefixCache, tokens: list[int], keys: list[bytes]) -> None:
        keys.extend(i.to_bytes(16, "little") for i in range(len(keys), len(tokens) // self.block_size))

    monkeypatch.setattr(PrefixCache, "extend_keys", colliding)
    a, b = ids(700, 12), ids(700, 13)
    on = one_by_one(engine(model), [a, b, a])
    off = one_by_one(engine(model, caching=False), [a, b, a])
    assert [r["cached"] for r in on] == [0, 0, 512]  # `a` itself still hits
    assert_same(on, off)


# ---------------------------------------------------------------------- memory
def test_eviction_under_pressure(model: torch.nn.Module, cfg: MiniMaxConfig) -> None:
    """A KV pool of 100 pages (~2 prompts) and room for 3 snapshots: eight different prompts evict blocks and
    snapshots; results stay exact, the budget holds, and the last prompt still hits."""
    snapshot = len(cfg.linear_layers) * cfg.num_attention_heads * cfg.head_dim ** 2 * 4
    prompts = [ids(700, 20 + i) for i in range(8)] + [ids(700, 27)]
    kw = {"num_kv_blocks": 100, "max_num_seqs": 2}
    eng = engine(model, prefix_cache_bytes=3 * snapshot, **kw)
    on = one_by_one(eng, prompts)
    assert_same(on, one_by_one(engine(model, caching=False, **kw), prompts))
    st = eng.stats().prefix_cache
    assert st.evicted_blocks > 0 and st.evicted_snapshots > 0
    assert st.snapshots <= 3 and st.snapshot_bytes <= 3 * snapshot
    assert on[-1]["cached"] == 512
    assert eng.stats().free_kv_blocks == 100  # blocks only the cache holds count as free


def test_snapshots_spill_to_host_memory_and_come_back(model: torch.nn.Module, cfg: MiniMaxConfig) -> None:
    """Room for one snapshot on the device and four on the host: the first prompt's snapshots move to the host
    while the others run, and its second run restores from there (copied back), with the same results."""
    snapshot = len(cfg.linear_layers) * cfg.num_attention_heads * cfg.head_dim ** 2 * 4
    prompts = [ids(700, 60), ids(700, 61), ids(700, 60)]
    eng = engine(model, prefix_cache_bytes=snapshot, prefix_cache_host_bytes=4 * snapshot)
    on = one_by_one(eng, prompts)
    assert_same(on, one_by_one(engine(model, caching=False), prompts))
    snapshots = eng.prefix_cache.snapshots
    assert on[-1]["cached"] == 512 and snapshots.num_reloads >= 1 and snapshots.num_spills >= 3
    assert snapshots.bytes_used <= snapshot and snapshots.host_bytes_used <= 4 * snapshot
    assert len(snapshots) == 4 and snapshots.num_evictions == 0


def test_preemption_keeps_results_and_references(model: torch.nn.Module) -> None:
    system = ids(600, 30)
    prompts = [system + ids(50 + 10 * i, 31 + i) for i in range(4)]
    kw = {"num_kv_blocks": 70, "max_num_seqs": 4}
    eng = engine(model, **kw)
    on = run_all(eng, prompts, n=40)
    assert eng.stats().preemptions_total > 0
    assert_same(on, run_all(engine(model, caching=False, **kw), prompts, n=40))


# ---------------------------------------------------------------------- concurrency and aborts
def test_concurrent_requests_share_the_prefill(model: torch.nn.Module) -> None:
    """Two requests with the same 800-token prefix arrive together: the second waits for the first's
    snapshots instead of prefilling the prefix a second time."""
    system = ids(800, 40)
    prompts = [system + ids(30, 41), system + ids(45, 42)]
    eng = engine(model)
    computed = 0

    rids = [eng.add_request(p, greedy()) for p in prompts]
    cached = {}
    for _ in range(200):
        if not eng.has_unfinished():
            break
        for o in eng.step():
            cached[o.request_id] = o.cached_tokens
        computed += eng.stats().last_step_num_tokens
    check_refs(eng)
    assert cached[rids[1]] == 768
    assert computed < sum(len(p) for p in prompts) - 700 + 2 * 6
    assert_same(run_all(eng, prompts), run_all(engine(model, caching=False), prompts))


def test_abort_mid_prefill_leaves_no_reference(model: torch.nn.Module) -> None:
    system = ids(900, 50)
    eng = engine(model, max_num_batched_tokens=256)
    one_by_one(eng, [system + ids(20, 51)])  # cache the system prompt
    rids = [eng.add_request(system + ids(300 + i, 52 + i), greedy()) for i in range(3)]
    eng.step()
    eng.step()
    assert eng.store.block_tables  # running, with shared blocks mapped
    for r in rids[:2]:
        assert eng.abort(r)
    for _ in range(100):
        if not eng.has_unfinished():
            break
        eng.step()
    check_refs(eng)
    assert not eng.prefix_cache.pending


# ---------------------------------------------------------------------- GPU (bench/gpu_suite.sh runs these)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_multi_turn_matches_caching_off(cfg: MiniMaxConfig, dtype: torch.dtype) -> None:
    """The same chat on the GPU path: Triton kernels, snapshots and restores on the device, decode steps replayed
    from CUDA graphs over block tables that map shared blocks. Greedy tokens must be equal (fp32 logprobs are not
    compared here: the Triton kernels use tf32 products for fp32 inputs)."""
    gpu = make_model(cfg, dtype=dtype).cuda()
    prompts = conversation(seed=9)
    eng = engine(gpu)
    on = one_by_one(eng, prompts)
    off = one_by_one(engine(gpu, caching=False), prompts)
    assert [r["tokens"] for r in on] == [r["tokens"] for r in off]
    assert [r["cached"] for r in on] == [0, 512, 768]
    assert eng.graphs is not None and eng.graphs.num_replays > 0
