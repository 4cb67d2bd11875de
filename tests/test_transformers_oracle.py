"""Second, external oracle: transformers 5.17's own `MiniMaxForCausalLM` on a random tiny model.

Known differences of transformers' in-tree MiniMax, handled here (docs/model.md §10):
- #1 RoPE width: it rotates the FULL head (it ignores `partial_rotary_factor`/`rotary_dim`), while the original
  rotates only the first `rotary_dim` dims. So OUR config gets rotary_dim = head_dim for the comparison; a
  guard test shows that with the original partial RoPE the two models differ by O(1) logit-std.
- #5 slope factor: it uses 1 − l/(L−1+1e−5) + 1e−5 instead of the original 1 − l/(L−1) + 1e−5 (≤1e−5
  relative; unpatched it moves the logits by ~5e-6 logit-std, inside the tolerance below). We patch its decay buffers to the original formula so that the tolerance reflects fp32 rounding only.
- #2 cached-decode positions are wrong there, so only full sequences without a cache are compared.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from minimax01.config import MiniMaxConfig
from minimax01.causal_lm import MiniMaxForCausalLM
from conftest import PROMPT_LEN, make_model, random_ids, to_v5_names

transformers = pytest.importorskip("transformers")

# Both models compute in fp32 with the same weights; they differ in summation order only (block sizes,
# eager vs SDPA attention, expert accumulation). Measured: 3e-6 logit-std max, the same as our own fp32-vs-fp64
# difference (4e-6), and docs/model.md §11 expects ~1e-5 for a correct fp32 implementation. 5e-5 leaves 10x margin and is
# still 30000x below the partial-RoPE difference (1.5 logit-std) the guard test shows.
TOLERANCE_STD = 5e-5


@pytest.fixture(scope="module")
def full_rope_config(tiny_config: MiniMaxConfig) -> MiniMaxConfig:
    """The tiny config (16 layers, layer 0 lightning) with RoPE over the whole head, as transformers does it."""
    return dataclasses.replace(tiny_config, rotary_dim=tiny_config.head_dim)


def transformers_config(c: MiniMaxConfig) -> Any:
    """The same model in transformers' spelling (docs/model.md §1.2); `layer_types` always given, since transformers'
    default would start with a softmax layer."""
    return transformers.MiniMaxConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, num_local_experts=c.num_local_experts,
        num_experts_per_tok=c.num_experts_per_tok, rms_norm_eps=c.rms_norm_eps, block_size=c.block_size,
        layer_types=["full_attention" if t else "linear_attention" for t in c.attn_type_list],
        # transformers ignores partial_rotary_factor (docs/model.md §10 #1); we write it so that OUR loader, reading
        # the config.json transformers saves, builds the same full-width RoPE.
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta,
                         "partial_rotary_factor": c.rotary_dim / c.head_dim},
        full_attn_alpha_factor=c.layernorm_full_attention_alpha, full_attn_beta_factor=c.layernorm_full_attention_beta,
        linear_attn_alpha_factor=c.layernorm_linear_attention_alpha,
        linear_attn_beta_factor=c.layernorm_linear_attention_beta,
        mlp_alpha_factor=c.layernorm_mlp_alpha, mlp_beta_factor=c.layernorm_mlp_beta,
        max_position_embeddings=4096, attn_implementation="eager")


def use_original_slopes(model: Any) -> None:
    """Rewrite transformers' slope_rate/decay buffers with the original layer factor (docs/model.md §10 #5), using its own
    `decay_factors` so that only the factor changes."""
    L = model.config.num_hidden_layers
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if not hasattr(attn, "slope_rate"):
            continue
        H = attn.num_attention_heads
        slopes = (1 / (2 ** (8 / H))) ** (torch.arange(H) + 1)
        rate = (slopes * (1 - i / (L - 1) + 1e-5))[:, None, None]
        for name, value in zip(("slope_rate", "query_decay", "key_decay", "diagonal_decay"),
                               (rate, *attn.decay_factors(rate))):
            getattr(attn, name).copy_(value)


@pytest.fixture(scope="module")
def ours(full_rope_config: MiniMaxConfig) -> MiniMaxForCausalLM:
    return make_model(full_rope_config, dtype=torch.float32)


@pytest.fixture(scope="module")
def theirs(ours: MiniMaxForCausalLM, full_rope_config: MiniMaxConfig) -> Any:
    """transformers' model with our weights (renamed to its v5 names), fp32, eval."""
    try:
        model = transformers.MiniMaxForCausalLM(transformers_config(full_rope_config)).float().eval()
    except Exception as e:  # a transformers version without a working MiniMax
        pytest.skip(f"transformers {transformers.__version__} cannot build MiniMaxForCausalLM: {e!r}")
    missing, unexpected = model.load_state_dict(to_v5_names(ours.state_dict(),
                                                            full_rope_config.num_local_experts), strict=False)
    assert not unexpected
    # only its derived lightning buffers are not weights
    assert {k.rsplit(".", 1)[-1] for k in missing} <= {"slope_rate", "query_decay", "key_decay", "diagonal_decay"}
    use_original_slopes(model)
    return model


@pytest.fixture(scope="module")
def ids(tiny_config: MiniMaxConfig) -> torch.Tensor:
    return random_ids(2, PROMPT_LEN, tiny_config.vocab_size, seed=21)  # crosses a lightning block


@pytest.fixture(scope="module")
def their_logits(theirs: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return theirs(input_ids=ids, use_cache=False).logits.float()


def test_matches_transformers(ours: MiniMaxForCausalLM, ids: torch.Tensor, their_logits: torch.Tensor) -> None:
    logits = ours(ids, use_cache=False).logits
    assert logits.shape == their_logits.shape
    assert (logits - their_logits).abs().max() < TOLERANCE_STD * their_logits.std()


def test_partial_rope_differs_from_transformers(ours: MiniMaxForCausalLM, tiny_config: MiniMaxConfig,
                                                ids: torch.Tensor, their_logits: torch.Tensor) -> None:
    """Guard (and documentation of docs/model.md §10 #1): the ORIGINAL partial RoPE — our default — is not what
    transformers computes, so the comparison above can fail."""
    partial = MiniMaxForCausalLM(tiny_config).float().eval()
    partial.load_state_dict(ours.state_dict())
    logits = partial(ids, use_cache=False).logits
    assert (logits - their_logits).abs().max() > 0.3 * their_logits.std()


def test_transformers_checkpoint_loads(theirs: Any, ours: MiniMaxForCausalLM, ids: torch.Tensor,
                                       tmp_path: Path) -> None:
    """transformers' own save_pretrained output (its config.json spelling, its tensor names and its derived decay
    buffers) loads into an identical model."""
    theirs.save_pretrained(tmp_path)
    loaded = MiniMaxForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, progress=False)
    assert loaded.config.rotary_dim == ours.config.rotary_dim
    assert loaded.config.attn_type_list == ours.config.attn_type_list
    assert torch.equal(loaded(ids, use_cache=False).logits, ours(ids, use_cache=False).logits)
