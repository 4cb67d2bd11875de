"""MiniMaxConfig: reads both config.json spellings (original `minimax_text_01` and transformers `minimax`),
validates every field with an error that names the key, and knows the parameter/memory arithmetic that
`minimax01 info` and `minimax01 plan` print without allocating anything (docs/model.md §1)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from minimax01.errors import ConfigError

LINEAR, FULL = 0, 1  # attn_type_list values: 0 = lightning (linear) attention, 1 = softmax attention
_LAYER_TYPE_NAMES = {"linear_attention": LINEAR, "full_attention": FULL}

# DeepNorm alpha for an 80-layer model: (2 * 80) ** 0.25 (docs/model.md §1.1).
_TEXT01_ALPHA = 3.5565588200778455

# (original key, transformers key) pairs for the DeepNorm residual factors (docs/model.md §1.2).
_ALPHA_BETA_KEYS = [
    ("layernorm_full_attention_alpha", "full_attn_alpha_factor"),
    ("layernorm_full_attention_beta", "full_attn_beta_factor"),
    ("layernorm_linear_attention_alpha", "linear_attn_alpha_factor"),
    ("layernorm_linear_attention_beta", "linear_attn_beta_factor"),
    ("layernorm_mlp_alpha", "mlp_alpha_factor"),
    ("layernorm_mlp_beta", "mlp_beta_factor"),
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def default_attn_type_list(num_layers: int, period: int = 8) -> list[int]:
    """Text-01's pattern: 7 lightning layers then 1 softmax layer, repeated ((i+1) % 8 == 0 is softmax)."""
    return [FULL if (i + 1) % period == 0 else LINEAR for i in range(num_layers)]


@dataclass
class MiniMaxConfig:
    vocab_size: int = 200064
    hidden_size: int = 6144
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 9216
    num_local_experts: int = 32
    num_experts_per_tok: int = 2
    hidden_act: str = "silu"
    attn_type_list: list[int] = field(default_factory=lambda: default_attn_type_list(80))
    rope_theta: float = 10_000_000.0
    rotary_dim: int | None = None  # None -> head_dim // 2, as the original code does
    max_position_embeddings: int = 10_240_000
    rms_norm_eps: float = 1e-5
    lightning_norm_eps: float = 1e-6  # not in config.json: the original hard-codes the class default
    postnorm: bool = True
    layernorm_full_attention_alpha: float = _TEXT01_ALPHA
    layernorm_full_attention_beta: float = 1.0
    layernorm_linear_attention_alpha: float = _TEXT01_ALPHA
    layernorm_linear_attention_beta: float = 1.0
    layernorm_mlp_alpha: float = _TEXT01_ALPHA
    layernorm_mlp_beta: float = 1.0
    shared_intermediate_size: int = 0
    tie_word_embeddings: bool = False
    block_size: int = 256  # lightning prefill block (the original's module global BLOCK)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # Extra keys of the source file that are not modelled here (kept so save_pretrained round-trips them).
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.rotary_dim is None and isinstance(self.head_dim, int):  # a bad head_dim is reported by validate()
            self.rotary_dim = self.head_dim // 2
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config key '{name}' must be a positive integer, got {value!r}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "intermediate_size", "num_local_experts",
                     "num_experts_per_tok", "max_position_embeddings", "block_size", "rotary_dim"):
            positive(name)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config key 'num_attention_heads' ({self.num_attention_heads}) must be a multiple of "
                f"'num_key_value_heads' ({self.num_key_value_heads})")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ConfigError("config key 'num_experts_per_tok' must not exceed 'num_local_experts'")
        if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise ConfigError(f"config key 'rotary_dim' must be even and <= head_dim ({self.head_dim}), "
                              f"got {self.rotary_dim}")
        if self.hidden_act != "silu":
            raise ConfigError(f"config key 'hidden_act' must be 'silu', got {self.hidden_act!r}")
        if len(self.attn_type_list) != self.num_hidden_layers:
            raise ConfigError(f"config key 'attn_type_list' has {len(self.attn_type_list)} entries but "
                              f"num_hidden_layers is {self.num_hidden_layers}")
        if any(t not in (LINEAR, FULL) for t in self.attn_type_list):
            raise ConfigError("config key 'attn_type_list' may only contain 0 (lightning) and 1 (softmax)")
        if self.shared_intermediate_size:
            raise ConfigError("config key 'shared_intermediate_size' must be 0: MiniMax-Text-01 has no shared "
                              "expert and minimax01 does not implement one")
        if not self.rope_theta > 0:
            raise ConfigError(f"config key 'rope_theta' must be > 0, got {self.rope_theta!r}")
        for key in ("rms_norm_eps", "lightning_norm_eps"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config key '{key}' must be > 0")

    # ------------------------------------------------------------------ derived
    @property
    def linear_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.attn_type_list) if t == LINEAR]

    @property
    def full_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.attn_type_list) if t == FULL]

    @property
    def inner_size(self) -> int:
        """Attention inner width: heads * head_dim (8192 for Text-01, != hidden_size)."""
        return self.num_attention_heads * self.head_dim

    def layer_pattern(self) -> str:
        """E.g. 'LLLLLLLS' * 10: L = lightning, S = softmax."""
        return "".join("S" if t == FULL else "L" for t in self.attn_type_list)

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "MiniMaxConfig":
        """Accepts the original spelling and the transformers spelling (docs/model.md §1.2)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
        d = dict(raw)
        # The text part of a MiniMax-VL config, if someone hands us one.
        if "text_config" in d and "hidden_size" not in d:
            d = dict(d["text_config"])
        kw: dict[str, Any] = {}
        aliases: dict[str, str] = {}  # field -> the key it was read from when the file spells it differently

        # layer pattern: attn_type_list | decoder_attention_types | layer_types
        if "attn_type_list" in d:
            kw["attn_type_list"] = d.pop("attn_type_list")
            d.pop("layer_types", None)
        elif "decoder_attention_types" in d:
            kw["attn_type_list"] = d.pop("decoder_attention_types")
            aliases["attn_type_list"] = "decoder_attention_types"
        elif "layer_types" in d:
            names = d.pop("layer_types")
            aliases["attn_type_list"] = "layer_types"
            if not isinstance(names, list):
                raise ConfigError("config key 'layer_types' must be a list")
            try:
                kw["attn_type_list"] = [_LAYER_TYPE_NAMES[n] for n in names]
            except KeyError as e:
                raise ConfigError(f"config key 'layer_types' has unknown entry {e.args[0]!r} "
                                  f"(expected 'linear_attention' or 'full_attention')") from None
        if "attn_type_list" in kw and not isinstance(kw["attn_type_list"], list):
            raise ConfigError("config key 'attn_type_list' must be a list of 0/1")

        for orig, tf in _ALPHA_BETA_KEYS:
            if orig in d:
                kw[orig] = d.pop(orig)
                d.pop(tf, None)
            elif tf in d:
                kw[orig] = d.pop(tf)
                aliases[orig] = tf

        # RoPE: rope_theta + rotary_dim (original) or rope_parameters{rope_theta, partial_rotary_factor} (TF5)
        rope_params = d.pop("rope_parameters", None) or d.pop("rope_scaling", None)
        if "rope_theta" in d:
            kw["rope_theta"] = d.pop("rope_theta")
        if isinstance(rope_params, dict):
            if rope_params.get("rope_type", "default") not in ("default", None):
                raise ConfigError(f"config key 'rope_parameters.rope_type' must be 'default', got "
                                  f"{rope_params.get('rope_type')!r}: MiniMax-Text-01 uses no RoPE scaling")
            if "rope_theta" not in kw:
                kw["rope_theta"] = rope_params.get("rope_theta", MiniMaxConfig.rope_theta)
                aliases["rope_theta"] = "rope_parameters.rope_theta"
            if "partial_rotary_factor" in rope_params:
                aliases["rotary_dim"] = "rope_parameters.partial_rotary_factor"
                factor = rope_params["partial_rotary_factor"]
        if "partial_rotary_factor" in d:
            aliases["rotary_dim"] = "partial_rotary_factor"
            factor = d.pop("partial_rotary_factor")
        if d.get("head_dim") is None and _is_int(d.get("hidden_size")) and _is_int(d.get("num_attention_heads")) \
                and d["num_attention_heads"] > 0:
            # transformers' fallback; the real model always sets head_dim=128 explicitly.
            d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        if "rotary_dim" in d:
            aliases.pop("rotary_dim", None)
        elif "rotary_dim" in aliases:
            if not isinstance(factor, (int, float)) or isinstance(factor, bool):
                raise ConfigError(f"config key '{aliases['rotary_dim']}' must be a number, got {factor!r}")
            head_dim = d.get("head_dim", MiniMaxConfig.head_dim)
            if _is_int(head_dim):  # otherwise validate() reports head_dim
                kw["rotary_dim"] = int(round(factor * head_dim))
        if "block" in d and "block_size" not in d:
            d["block_size"] = d.pop("block")
            aliases["block_size"] = "block"

        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {}
        for key, value in d.items():
            if key in known:
                kw[key] = value
            else:
                extra[key] = value
        if extra.get("postnorm") is not None:
            kw["postnorm"] = extra.pop("postnorm")
        if kw.get("postnorm") is False:
            raise ConfigError("config key 'postnorm' is false: MiniMax-Text-01 is post-norm and minimax01 "
                              "implements only that residual form")
        for key in ("num_hidden_layers",):
            if key not in kw:
                raise ConfigError(f"config is missing required key '{key}'")
        if "attn_type_list" not in kw:
            # transformers' own default starts with full attention at layer 0 (docs/model.md §1.2): never guess.
            raise ConfigError("config has no layer pattern: set 'attn_type_list' (original) or 'layer_types' "
                              "(transformers)")
        try:
            for key, value in kw.items():
                if key in ("rope_theta", "rms_norm_eps") or key.startswith("layernorm_"):
                    if not isinstance(value, (int, float)) or isinstance(value, bool):
                        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
                    kw[key] = float(value)
            return cls(**kw, extra=extra)
        except ConfigError as e:
            # validation speaks of the original key names: also name the key as this file spells it
            message = str(e)
            for name, spelled in aliases.items():
                message = message.replace(f"'{name}'", f"'{name}' (read from '{spelled}')")
            raise ConfigError(message) from None
        except TypeError as e:  # pragma: no cover - defensive: dataclass signature mismatch
            raise ConfigError(f"invalid config: {e}") from None

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "MiniMaxConfig":
        """Reads `config.json` from a checkpoint directory (or a path to a JSON file)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None

    @classmethod
    def preset(cls, name: str) -> "MiniMaxConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        return cls(**PRESETS[name]())

    @classmethod
    def preset_slice(cls, name: str, layers: int) -> "MiniMaxConfig":
        """`name`'s dimensions with only `layers` layers, softmax attention every 8th layer and in the last one
        (so that even 2 layers have one of each kind): what benchmarks at real dimensions run, and what
        `minimax01 plan --measured` compares its model with."""
        config = cls.preset(name)
        config.num_hidden_layers = layers
        config.attn_type_list = [1 if (i % 8 == 7 or i == layers - 1) else 0 for i in range(layers)]
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The original `minimax_text_01` spelling (what the released checkpoint's config.json uses)."""
        d = asdict(self)
        extra = d.pop("extra")
        d.pop("lightning_norm_eps")
        d.pop("block_size")
        out = {"architectures": ["MiniMaxText01ForCausalLM"], "model_type": "minimax_text_01"}
        out.update(extra)
        out.update(d)
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # ------------------------------------------------------------------ arithmetic (no allocation)
    def param_counts(self) -> dict[str, int]:
        """Parameter counts. `active` = per-token active parameters excluding embeddings and lm_head, the
        convention of the model card (45.9 B)."""
        h, d = self.hidden_size, self.inner_size
        kv = self.num_key_value_heads * self.head_dim
        lightning = 3 * d * h + d * h + d + h * d  # qkv_proj, output_gate, norm, out_proj
        softmax = d * h + 2 * kv * h + h * d  # q, k, v, o
        expert = 3 * h * self.intermediate_size
        per_layer_common = 2 * h + self.num_local_experts * h  # two norms + router
        attn = sum(lightning if t == LINEAR else softmax for t in self.attn_type_list)
        L = self.num_hidden_layers
        experts_total = L * self.num_local_experts * expert
        experts_active = L * self.num_experts_per_tok * expert
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        body_common = attn + L * per_layer_common + h  # + final norm
        return {
            "total": embed + head + body_common + experts_total,
            "active": body_common + experts_active,
            "embedding": embed + head,
            "experts": experts_total,
        }

    def lightning_state_bytes_per_seq(self) -> int:
        """fp32 state [heads, head_dim, head_dim] per lightning layer; independent of sequence length."""
        return len(self.linear_layers) * self.num_attention_heads * self.head_dim * self.head_dim * 4

    def kv_bytes_per_token(self, bytes_per_elem: int = 2) -> int:
        """Softmax-layer KV cache per token (keys + values of every softmax layer)."""
        return len(self.full_layers) * 2 * self.num_key_value_heads * self.head_dim * bytes_per_elem

    def weight_bytes(self, dtype: str = "bf16") -> int:
        """Checkpoint size. int8: weight-only int8 for every Linear except lm_head, embeddings and the router
        (the recipe of the official int8 quick-start), plus one fp32 scale per output channel (quant.py)."""
        counts = self.param_counts()
        if dtype in ("bf16", "fp16"):
            return 2 * counts["total"]
        if dtype == "fp32":
            return 4 * counts["total"]
        if dtype in ("int8", "fp8"):
            h = self.hidden_size
            unquantized = counts["embedding"] + self.num_hidden_layers * (self.num_local_experts * h + 2 * h) + h
            unquantized += sum(self.inner_size for t in self.attn_type_list if t == LINEAR)  # lightning norms
            quantized = counts["total"] - unquantized
            out_channels = self._quantized_out_channels()
            return quantized + 2 * unquantized + 4 * out_channels
        raise ConfigError(f"unknown dtype {dtype!r} (expected bf16, fp16, fp32, int8 or fp8)")

    def _quantized_out_channels(self) -> int:
        h, d, i = self.hidden_size, self.inner_size, self.intermediate_size
        kv = self.num_key_value_heads * self.head_dim
        total = 0
        for t in self.attn_type_list:
            total += (3 * d + d + h) if t == LINEAR else (d + 2 * kv + h)
            total += self.num_local_experts * (2 * i + h)
        return total


def _text01() -> dict[str, Any]:
    return {}


def _tiny() -> dict[str, Any]:
    # 16 layers so that global and linear layer indices differ in the slope factor (docs/model.md §11); 4 heads
    # (power of two) with head_dim 16 and partial RoPE on 8 dims.
    return dict(vocab_size=512, hidden_size=64, num_hidden_layers=16, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, intermediate_size=96, num_local_experts=4,
                num_experts_per_tok=2, attn_type_list=default_attn_type_list(16), rotary_dim=8,
                rope_theta=10_000_000.0, max_position_embeddings=1_048_576,
                layernorm_full_attention_alpha=(2 * 16) ** 0.25, layernorm_linear_attention_alpha=(2 * 16) ** 0.25,
                layernorm_mlp_alpha=(2 * 16) ** 0.25, eos_token_id=None)


PRESETS = {"text-01": _text01, "tiny": _tiny}


def format_count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover

