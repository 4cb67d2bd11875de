"""Long context on CPU: the chunked prefill path (O(chunk) activations, lightning state + KV cache carried
between chunks) must reproduce the single-pass result on a long random sequence."""

import time

import pytest
import torch

from minimax01 import MiniMaxConfig, MiniMaxForCausalLM
from minimax01.kernels.attention_ref import attend_one
from minimax01.model.model import init_random_weights_


@pytest.fixture(scope="module")
def model() -> MiniMaxForCausalLM:
    # 8 layers (7 lightning + 1 softmax) keep a 20K-token fp32 pass to a few seconds on 2 cores.
    cfg = MiniMaxConfig.preset("tiny")
    cfg = MiniMaxConfig(**{**cfg.__dict__, "num_hidden_layers": 8, "attn_type_list": cfg.attn_type_list[:8],
                           "extra": {}})
    return init_random_weights_(MiniMaxForCausalLM(cfg), seed=3).float()


def test_chunked_prefill_matches_single_pass_at_20k(model: MiniMaxForCausalLM) -> None:
    n = 20_000
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))
    t0 = time.time()
    single = model(ids, prefill_chunk_size=None, logits_to_keep=64)
    chunked = model(ids, prefill_chunk_size=3000, logits_to_keep=64)  # 3000: not a multiple of the 256 block
    assert time.time() - t0 < 120
    ref, got = single.logits, chunked.logits
    # fp32 end to end; the chunks change only the summation order inside the lightning scan and attention
    # (relative ~1e-6 per op), so 1e-4 of the logit scale is far below any real mistake (docs/model.md §11: >= 0.8).
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    # Both caches hold the same state: one more decoded token agrees too.
    nxt = ref[:, -1].argmax(-1, keepdim=True)
    a = model(nxt, cache=single.cache).logits
    b = model(nxt, cache=chunked.cache).logits
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    # The lightning state is the same size it was after one token: memory does not grow with n.
    assert single.cache.store.lightning.shape[-2:] == (model.config.head_dim, model.config.head_dim)


def test_lightning_state_memory_is_independent_of_length(model: MiniMaxForCausalLM) -> None:
    short = model(torch.randint(0, 512, (1, 10)))
    long = model(torch.randint(0, 512, (1, 3000)))
    assert short.cache.store.memory_bytes()["lightning_state"] == long.cache.store.memory_bytes()["lightning_state"]
    # ...while the softmax KV cache grows with the number of tokens (paged).
    assert long.cache.store.memory_bytes()["kv_cache"] > short.cache.store.memory_bytes()["kv_cache"]


@pytest.mark.parametrize("n,L,dtype", [(1, 37, torch.float64), (5, 5, torch.float64), (7, 300, torch.float64),
                                         (64, 200, torch.float64), (1, 37, torch.bfloat16), (7, 300, torch.bfloat16)])
def test_fused_attention_equals_masked_path(n: int, L: int, dtype: torch.dtype) -> None:
    """The CUDA path of attend_one (lower-right causal bias, per-kv-head expanded K/V; fp32/fp64 decode with
    the heads folded into the query length, 16-bit decode with SDPA's GQA), forced on CPU, against the
    boolean-mask path. fp64: both compute the same sums, so anything above 1e-12 is a wrong alignment or head
    mapping, not rounding. bf16: outputs are rounded to 2^-9 relative and the two paths may accumulate in
    different orders, so 2e-2 of the output scale (a wrong key or head changes outputs by O(1))."""
    g = torch.Generator().manual_seed(n * 1000 + L)
    H, KVH, D = 8, 2, 16
    q = torch.randn(n, H, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(L, KVH, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(L, KVH, D, generator=g, dtype=torch.float64).to(dtype)
    ref = attend_one(q, k, v, D ** -0.5, max_mask_elems=L * 3, fused=False)  # 3 rows per mask slice
    got = attend_one(q, k, v, D ** -0.5, fused=True)
    assert got.shape == ref.shape and got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-2 * float(ref.abs().max())
    assert (got - ref).abs().max() <= tol
