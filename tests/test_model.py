"""MiniMaxForCausalLM (docs/model.md §3–6, §8): cache paths == full forward, padding, dtypes, parameter names, and an
independent dense fp64 oracle written from the spec text."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from minimax01.cache import BatchInfo
from minimax01.config import MiniMaxConfig
from minimax01.errors import RequestError
from minimax01.causal_lm import MiniMaxForCausalLM
from conftest import PROMPT_LEN, capture_lm_head, make_model, random_ids

# The model computes in fp64 and returns float32 logits; two fp64 paths that agree to ~1e-13 can still differ by
# one float32 rounding of the logits (|logit| <~ 10, so 1 ulp <~ 1e-6). Real bugs move logits by O(1).
FP32_LOGITS = dict(rtol=2e-6, atol=2e-6)


def full_logits(model: MiniMaxForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, use_cache=False).logits


# ------------------------------------------------------------------ cache paths
def test_logits_are_float32_batch_seq_vocab(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig) -> None:
    ids = random_ids(2, 7, tiny_config.vocab_size)
    out = tiny_model(ids)
    assert out.logits.dtype == torch.float32
    assert out.logits.shape == (2, 7, tiny_config.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert tiny_model(ids, logits_to_keep=1).logits.shape == (2, 1, tiny_config.vocab_size)
    torch.testing.assert_close(tiny_model(ids, logits_to_keep=1).logits[:, 0], out.logits[:, -1], rtol=0, atol=0)


def test_prefill_then_decode_equals_full_forward(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig) -> None:
    k = 6
    ids = random_ids(2, PROMPT_LEN + k, tiny_config.vocab_size, seed=3)
    expected = full_logits(tiny_model, ids)
    out = tiny_model(ids[:, :PROMPT_LEN])
    got = [out.logits]
    for j in range(PROMPT_LEN, PROMPT_LEN + k):
        out = tiny_model(ids[:, j:j + 1], cache=out.cache)
        got.append(out.logits)
    torch.testing.assert_close(torch.cat(got, dim=1), expected, **FP32_LOGITS)
    assert out.cache.seq_lens() == [PROMPT_LEN + k] * 2


def test_chunked_prefill_equals_one_call(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig) -> None:
    chunks = [100, 190, 3, 1, 17]  # no multiple of 256; the second chunk crosses position 256
    ids = random_ids(1, sum(chunks), tiny_config.vocab_size, seed=4)
    expected = full_logits(tiny_model, ids)
    cache, got, start = None, [], 0
    for n in chunks:
        out = tiny_model(ids[:, start:start + n], cache=cache)
        cache, start = out.cache, start + n
        got.append(out.logits)
    torch.testing.assert_close(torch.cat(got, dim=1), expected, **FP32_LOGITS)


def test_mixed_flattened_step_equals_separate_calls(tiny_model: MiniMaxForCausalLM,
                                                    tiny_config: MiniMaxConfig) -> None:
    """The engine's step (docs/architecture.md): one flattened batch mixing a decode token, a prefill continuation that
    crosses position 256 and a fresh prefill, on non-contiguous slots."""
    seqs = [random_ids(1, n, tiny_config.vocab_size, seed=20 + i)[0] for i, n in enumerate((PROMPT_LEN + 1, 270, 40))]
    expected = [full_logits(tiny_model, s[None])[0, -1] for s in seqs]
    store = tiny_model.new_store(4)
    slots = [store.allocate() for _ in range(4)][1:]  # slot 0 stays unused
    first = BatchInfo(slots[:2], [0, 0], [PROMPT_LEN, 200])  # history of the first two sequences
    tiny_model.step(torch.cat([seqs[0][:PROMPT_LEN], seqs[1][:200]]), first, store)
    step = BatchInfo(slots, [PROMPT_LEN, 200, 0], [1, 70, 40])
    tokens = torch.cat([seqs[0][PROMPT_LEN:], seqs[1][200:], seqs[2]])
    got = tiny_model.step(tokens, step, store, logits_index=step.last_token_index)  # [3, V]
    torch.testing.assert_close(got, torch.stack(expected), **FP32_LOGITS)
    assert [store.seq_lens[s] for s in slots] == [PROMPT_LEN + 1, 270, 40]


def test_left_padded_batch_equals_each_sequence_alone(tiny_model: MiniMaxForCausalLM,
                                                      tiny_config: MiniMaxConfig) -> None:
    """Pads must not reach the softmax layers either (the original's mask never does, docs/model.md §10 #14)."""
    lens, width, k = [PROMPT_LEN, 137, 261], PROMPT_LEN, 3
    seqs = [random_ids(1, n + k, tiny_config.vocab_size, seed=10 + i)[0] for i, n in enumerate(lens)]
    ids = torch.zeros(len(lens), width, dtype=torch.long)
    mask = torch.zeros(len(lens), width, dtype=torch.long)
    for b, (s, n) in enumerate(zip(seqs, lens)):
        ids[b, width - n:], mask[b, width - n:] = s[:n], 1
    out = tiny_model(ids, attention_mask=mask)
    steps = [out.logits]
    for j in range(k):  # decode with the full-width mask, as generate() passes it
        mask = torch.cat([mask, torch.ones(len(lens), 1, dtype=torch.long)], dim=1)
        nxt = torch.stack([s[n + j] for s, n in zip(seqs, lens)])[:, None]
        out = tiny_model(nxt, attention_mask=mask, cache=out.cache)
        steps.append(out.logits)
    logits = torch.cat(steps, dim=1)  # [B, width + k, V]
    for b, (s, n) in enumerate(zip(seqs, lens)):
        alone = full_logits(tiny_model, s[None])[0]  # [n + k, V]
        torch.testing.assert_close(logits[b, width - n:], alone, **FP32_LOGITS)
        assert not logits[b, : width - n].any()  # pad positions carry no logits


def test_padded_row_differs_if_pads_were_attended(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig) -> None:
    """Guard for the test above: treating the pads as tokens changes the row by a lot, so equality is meaningful."""
    s = random_ids(1, 137, tiny_config.vocab_size, seed=11)
    padded = torch.cat([torch.zeros(1, 50, dtype=torch.long), s], dim=1)
    alone, unmasked = full_logits(tiny_model, s)[0], full_logits(tiny_model, padded)[0, 50:]
    assert (alone - unmasked).abs().max() > 0.1 * alone.std()


def test_right_padding_with_cache_raises(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig) -> None:
    ids = random_ids(2, 5, tiny_config.vocab_size)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with pytest.raises(RequestError, match="right padding"):
        tiny_model(ids, attention_mask=mask)
    # pads among the new tokens of a sequence that already has a cache are right padding too
    out = tiny_model(ids)
    with pytest.raises(RequestError, match="right padding"):
        tiny_model(ids[:, :2], attention_mask=torch.tensor([[1, 1], [0, 1]]), cache=out.cache)
    # without a cache the pads are simply dropped: exact
    no_cache = tiny_model(ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(no_cache[1, :3], full_logits(tiny_model, ids[1:, :3])[0], **FP32_LOGITS)


def test_bad_inputs_raise_request_error(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig) -> None:
    with pytest.raises(RequestError, match="input_ids"):
        tiny_model(torch.tensor([[0, tiny_config.vocab_size]]))
    with pytest.raises(RequestError, match="attention_mask"):
        tiny_model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4))
    out = tiny_model(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(RequestError, match="cache"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), cache=out.cache)


def test_bf16_model_keeps_fp32_lightning_state(tiny_config: MiniMaxConfig, tiny_model: MiniMaxForCausalLM) -> None:
    model = make_model(tiny_config, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    ids = random_ids(1, PROMPT_LEN + 1, tiny_config.vocab_size, seed=5)
    prefill = model(ids[:, :PROMPT_LEN])
    decode = model(ids[:, PROMPT_LEN:], cache=prefill.cache)
    store = decode.cache.store
    assert store.lightning.dtype == torch.float32  # docs/model.md §8/§10 #3: never the activation dtype
    assert store.k_cache.dtype == store.v_cache.dtype == torch.bfloat16
    assert decode.logits.dtype == torch.float32
    assert all(layer.self_attn.decay(torch.device("cpu")).dtype == torch.float32
               for layer in model.model.layers if layer.is_linear)
    # Same weights (rounded to bf16) as the fp64 model. bf16 keeps 8 bits per rounding and 16 post-norm layers
    # amplify them (a rare top-2 routing flip moves single logits further): measured mean |Δ| = 0.05 logit-std.
    ref = tiny_model(ids, use_cache=False).logits
    got = torch.cat([prefill.logits, decode.logits], dim=1)
    assert (got - ref).abs().mean() < 0.15 * ref.std()


# ------------------------------------------------------------------ parameter names (docs/model.md §2.1)
def original_names(config: MiniMaxConfig) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i, t in enumerate(config.attn_type_list):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                  p + "block_sparse_moe.gate.weight"}
        names |= {f"{p}block_sparse_moe.experts.{e}.{w}.weight" for e in range(config.num_local_experts)
                  for w in ("w1", "w2", "w3")}
        attn = ("qkv_proj", "output_gate", "norm", "out_proj") if t == 0 else ("q_proj", "k_proj", "v_proj", "o_proj")
        names |= {f"{p}self_attn.{a}.weight" for a in attn}
    return names


def test_state_dict_uses_original_checkpoint_names(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig) -> None:
    c = tiny_config
    sd = tiny_model.state_dict()
    L, E = c.num_hidden_layers, c.num_local_experts
    assert len(sd) == 3 + L * (3 + E * 3) + len(c.linear_layers) * 4 + len(c.full_layers) * 4
    assert set(sd) == original_names(c)
    h, d, kv, i = c.hidden_size, c.inner_size, c.num_key_value_heads * c.head_dim, c.intermediate_size
    shapes = {"qkv_proj": (3 * d, h), "output_gate": (d, h), "norm": (d,), "out_proj": (h, d), "q_proj": (d, h),
              "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, d), "w1": (i, h), "w3": (i, h), "w2": (h, i),
              "gate": (E, h)}
    for name, t in sd.items():
        kind = name.split(".")[-2]
        if kind in shapes:
            assert tuple(t.shape) == shapes[kind], name


def test_text01_state_dict_key_count() -> None:
    c = MiniMaxConfig.preset("text-01")
    with torch.device("meta"):
        model = MiniMaxForCausalLM(c)
    assert len(model.state_dict()) == 8243  # docs/model.md §2.1
    assert set(model.state_dict()) == original_names(c)


def test_sync_free_experts_equal_the_reference() -> None:
    """experts_dense (what a CUDA-graph capture runs when the experts fall back to torch) == experts_ref, in
    fp64 (same sums, another order: 1e-12), with repeated and unused experts among the picks."""
    from minimax01.kernels.moe_ref import experts_dense, experts_ref
    from minimax01.model.moe import route

    g = torch.Generator().manual_seed(3)
    E, H, inter, T = 6, 16, 24, 9
    x = torch.randn(T, H, generator=g, dtype=torch.float64)
    w13 = torch.randn(E, 2 * inter, H, generator=g, dtype=torch.float64)
    w2 = torch.randn(E, H, inter, generator=g, dtype=torch.float64)
    logits = torch.randn(T, E, generator=g, dtype=torch.float64)
    logits[:, 5] = -1e9  # expert 5 never picked
    weights, ids = route(logits, 2, torch.float64)
    ref = experts_ref(x, weights, ids, w13, w2)
    assert torch.allclose(experts_dense(x, weights, ids, w13, w2), ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(experts_dense(x, weights, ids.roll(1, 1), w13, w2), ref, rtol=1e-3)


# ------------------------------------------------------------------ independent spec oracle
@dataclasses.dataclass
class Oracle:
    """A deliberately simple, slow, dense fp64 re-implementation of docs/model.md §3–6, reading weights by their original
    checkpoint names. The keyword fields reproduce specific mistakes (mutations) so that we can show the
    comparison is able to fail."""

    sd: dict[str, torch.Tensor]
    config: MiniMaxConfig
    lightning_eps: float = 1e-6  # docs/model.md §3.6: the class default, not config.rms_norm_eps
    rotary_dim: int | None = None  # None: config.rotary_dim (first 64 of 128 dims in Text-01)
    qkv_layout: str = "per_head"  # docs/model.md §3.1 rows [h0: q k v, h1: q k v, ...]; "stacked" = [Q; K; V] (wrong)
    slope_index: str = "global"  # docs/model.md §3.2; "linear" = count lightning layers only (wrong)
    residual: str = "postnorm"  # docs/model.md §5; "prenorm" = residual is the un-normalised input (wrong)

    def w(self, name: str) -> torch.Tensor:
        return self.sd[name].double()

    @staticmethod
    def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight

    def lightning(self, p: str, x: torch.Tensor, layer: int) -> torch.Tensor:
        c = self.config
        n, H, D = x.shape[0], c.num_attention_heads, c.head_dim
        qkv = F.silu(x @ self.w(p + "qkv_proj.weight").T)
        if self.qkv_layout == "per_head":
            q, k, v = qkv.view(n, H, 3 * D).split(D, dim=-1)
        else:
            q, k, v = (t.reshape(n, H, D) for t in qkv.split(H * D, dim=-1))
        # slopes are fp32 in the original (a plain tensor attribute), and so is the layer factor product
        slope = torch.tensor([2 ** (-8 * (h + 1) / H) for h in range(H)], dtype=torch.float32)
        idx = layer if self.slope_index == "global" else c.linear_layers.index(layer)
        s = (slope * (1 - idx / (c.num_hidden_layers - 1) + 1e-5)).double()
        lam = torch.exp(-s)[:, None, None]
        kv = torch.zeros(H, D, D, dtype=torch.float64)
        o = torch.empty(n, H, D, dtype=torch.float64)
        for t in range(n):  # KV_t = λ KV_{t-1} + k_tᵀ v_t ; o_t = q_t KV_t
            kv = lam * kv + k[t][:, :, None] * v[t][:, None, :]
            o[t] = torch.einsum("hd,hde->he", q[t], kv)
        o = self.rms(o.reshape(n, H * D), self.w(p + "norm.weight"), self.lightning_eps)
        o = torch.sigmoid(x @ self.w(p + "output_gate.weight").T) * o
        return o @ self.w(p + "out_proj.weight").T

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, heads, D]: half-split RoPE on the first rotary_dim dims; angles and cos/sin in fp32 (docs/model.md §4)."""
        c = self.config
        rd = self.rotary_dim or c.rotary_dim
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, rd, 2).float() / rd))
        freqs = torch.outer(torch.arange(x.shape[0]).float(), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().double()[:, None], emb.sin().double()[:, None]
        xr = x[..., :rd]
        rotated = torch.cat([-xr[..., rd // 2:], xr[..., : rd // 2]], dim=-1)
        return torch.cat([xr * cos + rotated * sin, x[..., rd:]], dim=-1)

    def softmax_attention(self, p: str, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        n, H, KVH, D = x.shape[0], c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q = self.rope((x @ self.w(p + "q_proj.weight").T).view(n, H, D))
        k = self.rope((x @ self.w(p + "k_proj.weight").T).view(n, KVH, D))
        v = (x @ self.w(p + "v_proj.weight").T).view(n, KVH, D)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        heads = []
        for h in range(H):
            g = h // (H // KVH)
            scores = (q[:, h] @ k[:, g].T) / D**0.5
            heads.append(torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v[:, g])
        return torch.cat(heads, dim=-1) @ self.w(p + "o_proj.weight").T

    def moe(self, p: str, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        probs = torch.softmax(x @ self.w(p + "block_sparse_moe.gate.weight").T, dim=-1)  # [n, E]
        top, ids = probs.topk(c.num_experts_per_tok, dim=-1)
        route = torch.zeros_like(probs).scatter(1, ids, top / top.sum(-1, keepdim=True))  # dense [n, E]
        out = torch.zeros_like(x)
        for e in range(c.num_local_experts):
            q = f"{p}block_sparse_moe.experts.{e}."
            y = (F.silu(x @ self.w(q + "w1.weight").T) * (x @ self.w(q + "w3.weight").T)) @ self.w(q + "w2.weight").T
            out += route[:, e:e + 1] * y
        return out

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [n] -> fp64 logits [n, vocab]."""
        c = self.config
        h = self.w("model.embed_tokens.weight")[ids]
        for i, t in enumerate(c.attn_type_list):
            p = f"model.layers.{i}."
            xn = self.rms(h, self.w(p + "input_layernorm.weight"), c.rms_norm_eps)
            if t == 0:
                a = self.lightning(p + "self_attn.", xn, i)
                alpha, beta = c.layernorm_linear_attention_alpha, c.layernorm_linear_attention_beta
            else:
                a = self.softmax_attention(p + "self_attn.", xn)
                alpha, beta = c.layernorm_full_attention_alpha, c.layernorm_full_attention_beta
            postnorm = self.residual == "postnorm"
            h1 = (xn if postnorm else h) * alpha + a * beta
            yn = self.rms(h1, self.w(p + "post_attention_layernorm.weight"), c.rms_norm_eps)
            h = (yn if postnorm else h1) * c.layernorm_mlp_alpha + self.moe(p, yn) * c.layernorm_mlp_beta
        return self.rms(h, self.w("model.norm.weight"), c.rms_norm_eps) @ self.w("lm_head.weight").T


@pytest.fixture(scope="module")
def fp64_logits(tiny_model: MiniMaxForCausalLM, prompt: torch.Tensor) -> torch.Tensor:
    """Our model's fp64 logits [PROMPT_LEN, V] of the prompt (read before the float32 cast)."""
    captured, remove = capture_lm_head(tiny_model)
    try:
        tiny_model(prompt, use_cache=False)
    finally:
        remove()
    return captured[0]


@pytest.fixture(scope="module")
def oracle_logits(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig, prompt: torch.Tensor) -> torch.Tensor:
    return Oracle(tiny_model.state_dict(), tiny_config).logits(prompt[0])


def test_model_matches_spec_oracle(fp64_logits: torch.Tensor, oracle_logits: torch.Tensor) -> None:
    # Both fp64; they differ only in summation order (block vs token recurrence, SDPA vs explicit softmax).
    assert fp64_logits.dtype == torch.float64
    assert (fp64_logits - oracle_logits).abs().max() < 1e-10 * oracle_logits.std()


@pytest.mark.parametrize(("mutation", "min_std"), [
    # docs/model.md §11 measured (16 layers, 300 tokens) max |Δlogit| of eps 3.8, full RoPE 1.3, [Q;K;V] 6.5, linear
    # index 0.84, pre-norm 5.4 logit-std; this tiny model gives 2.7, 1.5, 6.1, 1.2, 5.7. The thresholds leave
    # a 2-3x margin and are still ~1e9 times the tolerance of the oracle comparison.
    ({"lightning_eps": 1e-5}, 1.0),
    ({"rotary_dim": 16}, 0.5),
    ({"qkv_layout": "stacked"}, 2.0),
    ({"slope_index": "linear"}, 0.4),
    ({"residual": "prenorm"}, 2.0),
])
def test_oracle_mutations_are_detected(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig,
                                       prompt: torch.Tensor, oracle_logits: torch.Tensor,
                                       mutation: dict, min_std: float) -> None:
    mutated = Oracle(tiny_model.state_dict(), tiny_config, **mutation).logits(prompt[0])
    diff = (mutated - oracle_logits).abs().max() / oracle_logits.std()
    assert diff > min_std, f"{mutation}: max |Δlogit| only {float(diff):.3g} logit-std"


def test_oracle_comparison_catches_a_model_bug(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig,
                                               prompt: torch.Tensor, oracle_logits: torch.Tensor) -> None:
    """The same weights in a model built with the lightning-norm eps of vLLM (1e-5, docs/model.md §10 #6)."""
    buggy = MiniMaxForCausalLM(dataclasses.replace(tiny_config, lightning_norm_eps=1e-5)).double().eval()
    buggy.load_state_dict(tiny_model.state_dict())
    logits = buggy(prompt, use_cache=False).logits[0].double()
    assert (logits - oracle_logits).abs().max() > 1.0 * oracle_logits.std()
