"""MiniMaxConfig: both config.json spellings (docs/model.md §1.2), defaults, validation messages, parameter counts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from minimax01.config import MiniMaxConfig, default_attn_type_list, format_count
from minimax01.errors import ConfigError

ALPHA = 3.5565588200778455  # (2 * 80) ** 0.25, docs/model.md §1.1

# The released config.json in the original spelling (docs/model.md §1.1 values; keys the model does not use included).
ORIGINAL_TEXT01: dict[str, Any] = {
    "architectures": ["MiniMaxText01ForCausalLM"],
    "model_type": "minimax_text_01",
    "vocab_size": 200064, "hidden_size": 6144, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 9216, "num_local_experts": 32,
    "num_experts_per_tok": 2, "hidden_act": "silu",
    "attn_type_list": [1 if (i + 1) % 8 == 0 else 0 for i in range(80)],
    "rope_theta": 10000000, "rotary_dim": 64, "max_position_embeddings": 10240000, "rms_norm_eps": 1e-05,
    "postnorm": True,
    "layernorm_full_attention_alpha": ALPHA, "layernorm_full_attention_beta": 1.0,
    "layernorm_linear_attention_alpha": ALPHA, "layernorm_linear_attention_beta": 1.0,
    "layernorm_mlp_alpha": ALPHA, "layernorm_mlp_beta": 1.0,
    "shared_intermediate_size": 0, "shared_moe_mode": "sigmoid", "tie_word_embeddings": False,
    "bos_token_id": None, "eos_token_id": None, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0,
    "output_router_logits": False, "sliding_window": None, "attention_dropout": 0.0, "initializer_range": 0.02,
    "use_cache": True, "transformers_version": "4.45.2",
}

# (original, transformers) spellings of the DeepNorm factors, docs/model.md §1.2 — written out here, not imported.
FACTOR_KEYS = [
    ("layernorm_full_attention_alpha", "full_attn_alpha_factor"),
    ("layernorm_full_attention_beta", "full_attn_beta_factor"),
    ("layernorm_linear_attention_alpha", "linear_attn_alpha_factor"),
    ("layernorm_linear_attention_beta", "linear_attn_beta_factor"),
    ("layernorm_mlp_alpha", "mlp_alpha_factor"),
    ("layernorm_mlp_beta", "mlp_beta_factor"),
]


def to_transformers_spelling(original: dict[str, Any]) -> dict[str, Any]:
    """The same config as transformers' `MiniMaxConfig` (model_type `minimax`) writes it (docs/model.md §1.2)."""
    d = {k: v for k, v in original.items() if k not in ("attn_type_list", "rotary_dim", "rope_theta", "postnorm",
                                                         "shared_intermediate_size", "shared_moe_mode")}
    d.update(architectures=["MiniMaxForCausalLM"], model_type="minimax", block_size=256)
    d["layer_types"] = ["full_attention" if t else "linear_attention" for t in original["attn_type_list"]]
    for orig, tf in FACTOR_KEYS:
        d[tf] = d.pop(orig)
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": original["rope_theta"],
                            "partial_rotary_factor": original["rotary_dim"] / original["head_dim"]}
    return d


def model_fields(config: MiniMaxConfig) -> dict[str, Any]:
    """Every field except `extra` (the unmodelled keys, which legitimately differ between spellings)."""
    d = dataclasses.asdict(config)
    d.pop("extra")
    return d


def tiny_original() -> dict[str, Any]:
    return MiniMaxConfig.preset("tiny").to_dict()


@pytest.mark.parametrize("original", [ORIGINAL_TEXT01, tiny_original()], ids=["text-01", "tiny"])
def test_both_spellings_give_equal_configs(original: dict[str, Any]) -> None:
    a = MiniMaxConfig.from_dict(original)
    b = MiniMaxConfig.from_dict(to_transformers_spelling(original))
    assert model_fields(a) == model_fields(b)
    assert a.rotary_dim == original["rotary_dim"]
    assert a.attn_type_list == original["attn_type_list"]


def test_released_config_equals_text01_preset() -> None:
    assert model_fields(MiniMaxConfig.from_dict(ORIGINAL_TEXT01)) == model_fields(MiniMaxConfig.preset("text-01"))


def test_text01_layer_pattern() -> None:
    c = MiniMaxConfig.preset("text-01")
    assert c.full_layers == [7, 15, 23, 31, 39, 47, 55, 63, 71, 79]
    assert len(c.linear_layers) == 70 and c.attn_type_list[0] == 0
    assert c.layer_pattern() == "LLLLLLLS" * 10
    assert c.inner_size == 8192 and c.rotary_dim == 64


@pytest.mark.parametrize("transformers_spelling", [False, True])
def test_rotary_dim_defaults_to_half_head_dim(transformers_spelling: bool) -> None:
    d = dict(ORIGINAL_TEXT01, head_dim=96)
    if transformers_spelling:
        d = to_transformers_spelling(d)
        del d["rope_parameters"]["partial_rotary_factor"]
    else:
        del d["rotary_dim"]
    assert MiniMaxConfig.from_dict(d).rotary_dim == 48


def test_original_spelling_wins_over_transformers_spelling() -> None:
    d = dict(ORIGINAL_TEXT01, mlp_alpha_factor=1.0, layer_types=["full_attention"] * 80)
    c = MiniMaxConfig.from_dict(d)
    assert c.layernorm_mlp_alpha == ALPHA and c.attn_type_list[0] == 0


@pytest.mark.parametrize(("patch", "key"), [
    ({"vocab_size": 0}, "vocab_size"),
    ({"hidden_size": "6144"}, "hidden_size"),
    ({"num_key_value_heads": 7}, "num_key_value_heads"),
    ({"num_experts_per_tok": 33}, "num_experts_per_tok"),
    ({"rotary_dim": 63}, "rotary_dim"),
    ({"rotary_dim": 256}, "rotary_dim"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attn_type_list": [0] * 79}, "attn_type_list"),
    ({"attn_type_list": [2] * 80}, "attn_type_list"),
    ({"attn_type_list": "0,1"}, "attn_type_list"),
    ({"shared_intermediate_size": 512}, "shared_intermediate_size"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps"),
    ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
    ({"rope_theta": -1.0}, "rope_theta"),
    ({"layernorm_mlp_alpha": None}, "layernorm_mlp_alpha"),
    ({"postnorm": False}, "postnorm"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
])
def test_validation_error_names_the_key(patch: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        MiniMaxConfig.from_dict(dict(ORIGINAL_TEXT01, **patch))


@pytest.mark.parametrize(("key", "value"), [
    ("mlp_alpha_factor", "3.5"),
    ("linear_attn_beta_factor", None),
    ("layer_types", ["linear_attention"] * 79),
])
def test_transformers_spelling_errors_name_the_key_of_the_file(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        MiniMaxConfig.from_dict(dict(to_transformers_spelling(ORIGINAL_TEXT01), **{key: value}))


@pytest.mark.parametrize("factor", ["0.5", None, 0.35])
def test_bad_partial_rotary_factor_names_the_key(factor: Any) -> None:
    d = to_transformers_spelling(ORIGINAL_TEXT01)
    d["rope_parameters"]["partial_rotary_factor"] = factor  # 0.35 * 128 -> 45 dims: odd, not a RoPE width
    with pytest.raises(ConfigError, match="rope_parameters.partial_rotary_factor"):
        MiniMaxConfig.from_dict(d)


def test_unknown_layer_type_names_the_key() -> None:
    d = to_transformers_spelling(ORIGINAL_TEXT01)
    d["layer_types"][3] = "sliding_attention"
    with pytest.raises(ConfigError, match="layer_types.*sliding_attention"):
        MiniMaxConfig.from_dict(d)


def test_missing_layer_pattern_is_rejected() -> None:
    # transformers' own default would start with full attention at layer 0 (docs/model.md §1.2): never guess.
    d = {k: v for k, v in ORIGINAL_TEXT01.items() if k != "attn_type_list"}
    with pytest.raises(ConfigError, match="attn_type_list.*layer_types"):
        MiniMaxConfig.from_dict(d)


def test_missing_num_hidden_layers_is_rejected() -> None:
    d = {k: v for k, v in ORIGINAL_TEXT01.items() if k != "num_hidden_layers"}
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        MiniMaxConfig.from_dict(d)


def test_text01_parameter_counts() -> None:
    counts = MiniMaxConfig.preset("text-01").param_counts()
    assert format_count(counts["total"]) == "456.09 B"
    assert format_count(counts["active"]) == "45.94 B"


def test_text01_alpha_is_deepnorm_for_80_layers() -> None:
    assert MiniMaxConfig.preset("text-01").layernorm_mlp_alpha == pytest.approx((2 * 80) ** 0.25, rel=1e-15)


def test_default_attn_type_list() -> None:
    assert default_attn_type_list(16) == [0] * 7 + [1] + [0] * 7 + [1]


def test_bad_json_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"num_hidden_layers": 80,')
    with pytest.raises(ConfigError, match=str(path)):
        MiniMaxConfig.from_pretrained(tmp_path)


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.json"):
        MiniMaxConfig.from_pretrained(tmp_path)


def test_invalid_value_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(ORIGINAL_TEXT01, hidden_act="relu")))
    with pytest.raises(ConfigError, match=rf"{path}.*hidden_act"):
        MiniMaxConfig.from_pretrained(path)


@pytest.mark.parametrize("transformers_spelling", [False, True])
def test_save_and_reload_round_trip(tmp_path: Path, transformers_spelling: bool) -> None:
    raw = to_transformers_spelling(ORIGINAL_TEXT01) if transformers_spelling else ORIGINAL_TEXT01
    c = MiniMaxConfig.from_dict(raw)
    c.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attn_type_list"] == ORIGINAL_TEXT01["attn_type_list"]  # written in the original spelling
    assert MiniMaxConfig.from_pretrained(tmp_path) == c
