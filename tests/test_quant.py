"""int8 weight-only quantization: the quantizer, Int8Linear / int8 experts, int8 checkpoints, memory and accuracy
on the tiny model. The Triton int8 kernels are tested in test_quant_kernels.py."""

from __future__ import annotations

import copy
import json
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, random_ids, to_v5_names
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from minimax01 import quant
from minimax01.config import MiniMaxConfig
from minimax01.errors import CheckpointError, ConfigError
from minimax01.kernels.moe_ref import experts_ref
from minimax01.kernels.w8a16_ref import dequantize
from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.model.moe import MoEExperts
from minimax01.quant import (
    Int8Linear,
    Int8MoEExperts,
    model_bytes,
    quantize_,
    quantize_weight,
)


@pytest.fixture(scope="module")
def tiny() -> MiniMaxForCausalLM:
    """The tiny model in fp32 (the accuracy reference) with the docs/model.md §11 init; tests copy it, never mutate it."""
    return make_model(MiniMaxConfig.preset("tiny"), seed=0, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------- quantizer
def test_quantize_weight_is_per_row_symmetric_and_within_half_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 7, 33, generator=g)  # [..., out, in] like the stacked experts
    w[1, 2] = 0.0  # an all-zero row
    w[2, 4, 5] = 50.0  # an outlier sets its row's scale alone
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == w.shape[:-1]
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127  # symmetric: -128 never produced
    nonzero = w.abs().amax(-1) > 0
    assert bool((q.abs().amax(-1)[nonzero] == 127).all())  # every row's absmax maps to ±127
    assert torch.equal(scale, torch.where(nonzero, w.abs().amax(-1) / 127, scale))
    err = (dequantize(q, scale, torch.float32) - w).abs()
    # round-to-nearest: at most half a step, plus fp32 rounding of q·scale (a few ulp of the absmax)
    assert bool((err <= scale[..., None] * (0.5 + 1e-5)).all())
    assert bool((q[1, 2] == 0).all()) and float(dequantize(q, scale, torch.float32)[1, 2].abs().max()) == 0.0
    # chunked work buffer (what keeps quantizing a 7 GB expert stack at 256 MiB of fp32): same result
    monkeypatch.setattr(quant, "_CHUNK_ELEMS", 2 * 33)
    q2, scale2 = quantize_weight(w)
    assert torch.equal(q2, q) and torch.equal(scale2, scale)


def test_int8_linear_matches_dequantized_reference_and_float_layer() -> None:
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(96, 40, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 96, generator=g) / 96 ** 0.5)
    qlin = Int8Linear.from_linear(lin)
    x = torch.randn(5, 3, 96, generator=g)
    with torch.no_grad():
        y, y_float = qlin(x), lin(x)
    assert y.shape == (5, 3, 40)
    # same function as dequantize-then-matmul, up to fp32 summation order
    torch.testing.assert_close(y, F.linear(x, dequantize(qlin.weight, qlin.weight_scale, torch.float32)),
                               rtol=1e-5, atol=1e-5)
    # vs the float layer: per-weight error is uniform in ±step/2, step = absmax/127 ≈ 4σ/127 for a Gaussian
    # row of 96, so the output error is ≈ 4/(127·√12) ≈ 1 % of the output's size; 3 % leaves room for the
    # absmax spread of single rows.
    rel = (y - y_float).norm() / y_float.norm()
    assert 1e-4 < float(rel) < 3e-2
    with pytest.raises(ValueError):
        Int8Linear.from_linear(nn.Linear(4, 4, bias=True))


def test_moe_int8_matches_experts_ref_on_dequantized_weights() -> None:
    g = torch.Generator().manual_seed(2)
    E, H, inter, T = 4, 32, 48, 11
    experts = MoEExperts(E, H, inter)
    with torch.no_grad():
        experts.w13.copy_(torch.randn(E, 2 * inter, H, generator=g) / H ** 0.5)
        experts.w2.copy_(torch.randn(E, H, inter, generator=g) / inter ** 0.5)
    q = Int8MoEExperts.from_experts(experts)
    x = torch.randn(T, H, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(E, generator=g)[:2] for _ in range(T)])  # [T, 2], 3 of 4 experts hit
    ids[ids == 3] = 0
    weights = torch.rand(T, 2, generator=g, dtype=torch.float64)
    ref = experts_ref(x, weights, ids, dequantize(q.w13, q.w13_scale, x.dtype),
                      dequantize(q.w2, q.w2_scale, x.dtype))
    out = q(x, weights, ids)  # the model's call: Int8MoEExperts.forward -> kernels.moe_experts_int8
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)  # fp64: identical math, only summation order
    assert not torch.equal(out, experts(x.float(), weights.float(), ids).double())  # it did quantize


# ----------------------------------------------------------------------------------------------- the model
def test_quantize_model_structure_memory_and_idempotence(tiny: MiniMaxForCausalLM) -> None:
    model = copy.deepcopy(tiny).to(torch.bfloat16)
    before = model_bytes(model)
    float_config = model.config
    quantize_(model, "int8")
    after = model_bytes(model)
    for name, m in model.named_modules():
        if name.endswith(("lm_head", "embed_tokens", "block_sparse_moe.gate")):
            assert isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.dtype == torch.bfloat16, name
        elif name.endswith(("qkv_proj", "output_gate", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj")):
            assert isinstance(m, Int8Linear) and m.weight.dtype == torch.int8, name
        elif name.endswith(".experts"):
            assert isinstance(m, Int8MoEExperts) and m.w13.dtype == m.w2.dtype == torch.int8, name
    assert not any(type(m) is nn.Linear for n, m in model.named_modules()
                   if not n.endswith(("lm_head", "block_sparse_moe.gate")))
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if "norm" in n)
    # measured bytes = the config's arithmetic (int8 weights + fp32 per-channel scales + bf16 rest)
    assert before == model.config.weight_bytes("bf16") and after == model.config.weight_bytes("int8")
    # tiny's embeddings + lm_head are 4 % of its weights, so int8 lands at 0.55 of bf16, not 0.50
    assert after / before < 0.56
    assert model.config.extra["quantization_config"]["quant_method"] == quant.QUANT_METHOD
    assert "quantization_config" not in float_config.extra  # the float model's config object is untouched
    state = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_(model, "int8")  # idempotent
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="int4"):
        quantize_(model, "int4")


def test_memory_halves_on_a_two_layer_real_dims_model_on_meta() -> None:
    """Real Text-01 widths (hidden 6144, 32 experts of 9216, vocab 200064), one lightning + one softmax
    layer, built on the meta device (no allocation): 11 GB of bf16 weights per layer."""
    config = MiniMaxConfig(num_hidden_layers=2, attn_type_list=[0, 1])
    with torch.device("meta"):
        model = MiniMaxForCausalLM(config).to(torch.bfloat16)

    def layer_bytes() -> int:
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".layers." in n)

    before, layers_before = model_bytes(model), layer_bytes()
    quantize_(model)
    after, layers_after = model_bytes(model), layer_bytes()
    assert before == config.weight_bytes("bf16") and after == config.weight_bytes("int8")
    # the decoder layers halve (+ 4/6144 for the fp32 scales, + the bf16 norms and router)
    assert 0.5 < layers_after / layers_before < 0.501
    # embeddings + lm_head (4.9 GB, kept bf16) weigh more here than in the 80-layer model: 0.57, not 0.50
    assert 0.55 < after / before < 0.6


def test_quantize_frees_each_float_weight_before_the_next(tiny: MiniMaxForCausalLM,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = copy.deepcopy(tiny)
    refs = [weakref.ref(p) for n, p in model.named_parameters()
            if n.endswith(("qkv_proj.weight", "out_proj.weight", "o_proj.weight", "experts.w13", "experts.w2"))]
    alive_at_call = []
    real = quant.quantize_weight

    def spy(w: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        alive_at_call.append(sum(r() is not None for r in refs))
        return real(w, *args)

    monkeypatch.setattr(quant, "quantize_weight", spy)
    quantize_(model)
    # each module's float weight is gone once its replacement is installed: the count of live float weights
    # falls while quantizing, instead of all of them living until the end
    assert alive_at_call[0] == len(refs) and alive_at_call[-1] <= 2
    assert all(r() is None for r in refs)


def _kl_top1(ref_logits: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """Mean KL(ref || other) of the next-token distributions, and top-1 agreement, over all positions."""
    lp, lq = ref_logits.double().log_softmax(-1), logits.double().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return float(kl.mean()), float((ref_logits.argmax(-1) == logits.argmax(-1)).double().mean())


def test_accuracy_of_int8_tiny_model_against_fp32(tiny: MiniMaxForCausalLM) -> None:
    """256 positions (4 × 64 tokens), int8 weights with fp32 activations vs the fp32 model. The random tiny
    model predicts nearly flat distributions (entropy 5.6 nats of ln 512 = 6.2) through 16 layers that amplify
    any perturbation, so top-1 flips at the smallest logit noise: the yardstick is the error of plain bf16
    inference on the same positions. Over model seeds 0-4 (bench/quant.py --only accuracy) int8 stayed below bf16
    in KL in 4 of 5 (at most 1.11×) and above it in top-1 in all 5; top-1 agreement ranged 0.87-0.96, so
    the absolute bounds below are that spread's floor, the relative ones the bf16 comparison with margin."""
    ids = random_ids(4, 64, tiny.config.vocab_size, seed=1)
    ref = tiny(ids).logits
    kl_q, top1_q = _kl_top1(ref, quantize_(copy.deepcopy(tiny))(ids).logits)
    kl_bf16, top1_bf16 = _kl_top1(ref, copy.deepcopy(tiny).to(torch.bfloat16)(ids).logits)
    assert 0 < kl_q < 1.5 * kl_bf16 and top1_q >= top1_bf16 - 0.03  # int8 error ~ bf16 rounding error
    assert kl_q < 1e-2 and top1_q >= 0.85


# ----------------------------------------------------------------------------------------------- checkpoints
def test_int8_checkpoint_roundtrip(tiny: MiniMaxForCausalLM, tmp_path: Path) -> None:
    model = quantize_(copy.deepcopy(tiny).to(torch.bfloat16))
    model.save_pretrained(tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "minimax01-int8" and "block_sparse_moe.gate" in qc["modules_to_not_convert"]
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("model.layers.0.self_attn.qkv_proj.weight").get_dtype() == "I8"
        assert f.get_slice("model.layers.0.self_attn.qkv_proj.weight_scale").get_dtype() == "F32"
        assert f.get_slice("model.layers.3.block_sparse_moe.experts.1.w3.weight").get_dtype() == "I8"
        assert f.get_slice("model.layers.3.block_sparse_moe.experts.1.w3.weight_scale").get_dtype() == "F32"
        assert f.get_slice("model.layers.3.block_sparse_moe.gate.weight").get_dtype() == "BF16"
    loaded = MiniMaxForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)  # built int8 from config.json
    assert isinstance(loaded.model.layers[7].self_attn.q_proj, Int8Linear)
    want = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    ids = random_ids(2, 8, tiny.config.vocab_size, seed=3)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    # quantize="int8" on an int8 checkpoint is the same load
    again = MiniMaxForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, quantize="int8", progress=False)
    assert all(torch.equal(again.state_dict()[k], want[k]) for k in want)


def test_quantize_on_load_equals_quantize_after_load(tiny: MiniMaxForCausalLM, tmp_path: Path) -> None:
    model = copy.deepcopy(tiny).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "orig")
    # the same weights under transformers-v5 names (stacked gate_up_proj / down_proj, mlp.gate)
    v5 = to_v5_names(model.state_dict(), model.config.num_local_experts)
    model.config.save_pretrained(tmp_path / "v5")
    save_file({k: v.contiguous().clone() for k, v in v5.items()}, str(tmp_path / "v5" / "model.safetensors"))
    after = quantize_(MiniMaxForCausalLM.from_pretrained(tmp_path / "orig", dtype=torch.bfloat16, progress=False))
    want = after.state_dict()
    for name in ("orig", "v5"):
        on_load = MiniMaxForCausalLM.from_pretrained(tmp_path / name, dtype=torch.bfloat16, quantize="int8",
                                                     progress=False)
        got = on_load.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name
    assert "quantization_config" not in json.loads((tmp_path / "orig" / "config.json").read_text())


def test_int8_checkpoint_errors(tiny: MiniMaxForCausalLM, tmp_path: Path) -> None:
    quantize_(copy.deepcopy(tiny).to(torch.bfloat16)).save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    raw = json.loads(cfg_path.read_text())
    raw["quantization_config"]["quant_method"] = "quanto"
    cfg_path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="quanto"):
        MiniMaxForCausalLM.from_pretrained(tmp_path, progress=False)
    del raw["quantization_config"]  # int8 tensors but a float config: named, not silently cast
    cfg_path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="dtype I8"):
        MiniMaxForCausalLM.from_pretrained(tmp_path, progress=False)
    with pytest.raises(ConfigError, match="int4"):
        MiniMaxForCausalLM.from_pretrained(tmp_path, quantize="int4", progress=False)
