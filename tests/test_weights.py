"""Checkpoint I/O (weights.py): save/load round trips, transformers-v5 and TF4 names (docs/model.md §2.2), no random
init while loading, and an error naming the file and tensor for every kind of broken checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minimax01.config import MiniMaxConfig
from minimax01.errors import CheckpointError, ConfigError
from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.checkpoint_reader import INDEX_FILE, SINGLE_FILE
from conftest import make_model, random_ids, to_v5_names

WriteCheckpoint = Callable[..., Path]
# The tiny fp64 checkpoint is ~11 MiB (the 8-layer one ~6 MiB): 2 MiB shards give several files.
SMALL_SHARDS = 2 * 2**20


@pytest.fixture(scope="module")
def small_config() -> MiniMaxConfig:
    """8 layers (layer 7 softmax) keep the checkpoints of the error tests small."""
    return MiniMaxConfig.from_dict(dict(MiniMaxConfig.preset("tiny").to_dict(), num_hidden_layers=8,
                                        attn_type_list=[0] * 7 + [1]))


@pytest.fixture(scope="module")
def small_model(small_config: MiniMaxConfig) -> MiniMaxForCausalLM:
    return make_model(small_config, seed=3)


@pytest.fixture(scope="module")
def ids(tiny_config: MiniMaxConfig) -> torch.Tensor:
    return random_ids(2, 260, tiny_config.vocab_size, seed=8)  # crosses a lightning block


def logits(model: MiniMaxForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, use_cache=False).logits


def load(path: Path, dtype: torch.dtype = torch.float64) -> MiniMaxForCausalLM:
    return MiniMaxForCausalLM.from_pretrained(path, dtype=dtype, progress=False)


# ------------------------------------------------------------------ round trips
def test_sharded_round_trip(tiny_model: MiniMaxForCausalLM, ids: torch.Tensor,
                            write_checkpoint: WriteCheckpoint) -> None:
    path = write_checkpoint(tiny_model, max_shard_bytes=SMALL_SHARDS)
    index = json.loads((path / INDEX_FILE).read_text())
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (path / SINGLE_FILE).exists()
    assert set(index["weight_map"]) == set(tiny_model.state_dict())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    loaded = load(path)
    assert loaded.config.to_dict() == tiny_model.config.to_dict()
    assert torch.equal(logits(loaded, ids), logits(tiny_model, ids))


def test_single_file_round_trip(tiny_model: MiniMaxForCausalLM, ids: torch.Tensor,
                                write_checkpoint: WriteCheckpoint) -> None:
    path = write_checkpoint(tiny_model)
    assert (path / SINGLE_FILE).exists() and not (path / INDEX_FILE).exists()
    assert set(load_file(path / SINGLE_FILE)) == set(tiny_model.state_dict())
    assert torch.equal(logits(load(path), ids), logits(tiny_model, ids))


def test_saving_again_removes_stale_shards(tiny_model: MiniMaxForCausalLM, write_checkpoint: WriteCheckpoint) -> None:
    write_checkpoint(tiny_model, max_shard_bytes=SMALL_SHARDS)
    path = write_checkpoint(tiny_model)  # same directory, now one file
    assert sorted(p.name for p in path.glob("*.safetensors")) == [SINGLE_FILE]
    assert not (path / INDEX_FILE).exists()


def test_loads_into_bf16(small_model: MiniMaxForCausalLM, write_checkpoint: WriteCheckpoint) -> None:
    loaded = load(write_checkpoint(small_model), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, small_model.state_dict()[name].to(torch.bfloat16)), name


def test_loading_builds_no_random_weights(small_model: MiniMaxForCausalLM, write_checkpoint: WriteCheckpoint,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """nn.Linear/nn.Embedding run their initialisers in __init__; while loading they may only touch meta tensors
    (no memory, no random numbers), never real parameters."""
    path = write_checkpoint(small_model)

    def guarded(init: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapper(tensor: torch.Tensor, *args: object, **kw: object) -> torch.Tensor:
            if tensor.device.type != "meta":
                raise AssertionError(f"{init.__name__} ran on a real {tuple(tensor.shape)} tensor while loading")
            return init(tensor, *args, **kw)
        return wrapper

    for name in ("kaiming_uniform_", "uniform_", "normal_"):
        monkeypatch.setattr(torch.nn.init, name, guarded(getattr(torch.nn.init, name)))
    with pytest.raises(AssertionError, match="ran on a real"):  # the guard works: a plain build trips it
        MiniMaxForCausalLM(small_model.config)
    rng = torch.get_rng_state()
    loaded = load(path, dtype=torch.bfloat16)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_transformers_v5_names(tiny_model: MiniMaxForCausalLM, tiny_config: MiniMaxConfig, ids: torch.Tensor,
                               tmp_path: Path) -> None:
    v5 = to_v5_names(tiny_model.state_dict(), tiny_config.num_local_experts)
    assert "model.layers.0.mlp.experts.gate_up_proj" in v5 and not any("block_sparse_moe" in k for k in v5)
    i, h = tiny_config.intermediate_size, tiny_config.hidden_size
    assert v5["model.layers.0.mlp.experts.gate_up_proj"].shape == (tiny_config.num_local_experts, 2 * i, h)
    tiny_config.save_pretrained(tmp_path)
    save_file({k: t.contiguous().clone() for k, t in v5.items()}, str(tmp_path / SINGLE_FILE))
    assert torch.equal(logits(load(tmp_path), ids), logits(tiny_model, ids))


def test_v5_gate_up_order_matters(small_model: MiniMaxForCausalLM, small_config: MiniMaxConfig, ids: torch.Tensor,
                                  tmp_path: Path) -> None:
    """Guard for the test above: w3 before w1 in gate_up_proj must give a different model."""
    v5 = to_v5_names(small_model.state_dict(), small_config.num_local_experts)
    key = "model.layers.0.mlp.experts.gate_up_proj"
    v5[key] = v5[key].roll(small_config.intermediate_size, dims=1)
    small_config.save_pretrained(tmp_path)
    save_file({k: t.contiguous().clone() for k, t in v5.items()}, str(tmp_path / SINGLE_FILE))
    assert not torch.allclose(logits(load(tmp_path), ids), logits(small_model, ids), atol=1e-3)


def test_tf4_derived_buffers_are_ignored(small_model: MiniMaxForCausalLM, small_config: MiniMaxConfig,
                                         ids: torch.Tensor, tmp_path: Path) -> None:
    """transformers v4 saves its decay tables (in bf16) next to the weights (docs/model.md §2.2); they are derived data."""
    state = {k: t.contiguous().clone() for k, t in small_model.state_dict().items()}
    H = small_config.num_attention_heads
    for i in small_config.linear_layers:
        p = f"model.layers.{i}.self_attn."
        state[p + "slope_rate"] = torch.ones(H, 1, 1, dtype=torch.bfloat16)
        state[p + "query_decay"] = torch.ones(H, 256, 1, dtype=torch.bfloat16)
        state[p + "key_decay"] = torch.ones(H, 256, 1, dtype=torch.bfloat16)
        state[p + "diagonal_decay"] = torch.ones(1, H, 256, 256, dtype=torch.bfloat16)
    small_config.save_pretrained(tmp_path)
    save_file(state, str(tmp_path / SINGLE_FILE))
    assert torch.equal(logits(load(tmp_path), ids), logits(small_model, ids))


# ------------------------------------------------------------------ broken checkpoints
@pytest.fixture
def sharded(small_model: MiniMaxForCausalLM, write_checkpoint: WriteCheckpoint) -> Path:
    return write_checkpoint(small_model, max_shard_bytes=SMALL_SHARDS)


@pytest.fixture
def single(small_model: MiniMaxForCausalLM, write_checkpoint: WriteCheckpoint) -> Path:
    return write_checkpoint(small_model, name="single")


def rewrite_single(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = load_file(path / SINGLE_FILE)
    edit(state)
    save_file(state, str(path / SINGLE_FILE))


def test_missing_shard(sharded: Path) -> None:
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*missing"):
        load(sharded)


def test_index_lists_a_tensor_the_shard_lacks(sharded: Path) -> None:
    index = json.loads((sharded / INDEX_FILE).read_text())
    index["weight_map"]["model.layers.0.self_attn.extra.weight"] = sorted(set(index["weight_map"].values()))[0]
    (sharded / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model.layers.0.self_attn.extra.weight"):
        load(sharded)


def test_bad_index_json(sharded: Path) -> None:
    (sharded / INDEX_FILE).write_text('{"weight_map": {')
    with pytest.raises(CheckpointError, match=INDEX_FILE):
        load(sharded)


def test_index_without_weight_map(sharded: Path) -> None:
    (sharded / INDEX_FILE).write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match=INDEX_FILE):
        load(sharded)


def test_truncated_file(single: Path) -> None:
    f = single / SINGLE_FILE
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=SINGLE_FILE):
        load(single)


def test_corrupt_header(single: Path) -> None:
    f = single / SINGLE_FILE
    data = bytearray(f.read_bytes())
    data[8:24] = b"this is not json"  # the JSON header starts after its 8-byte length
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=SINGLE_FILE):
        load(single)


def test_missing_key(single: Path) -> None:
    key = "model.layers.3.block_sparse_moe.experts.2.w3.weight"
    rewrite_single(single, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=rf"missing.*{key}"):
        load(single)


def test_unexpected_key(single: Path) -> None:
    key = "model.layers.2.self_attn.rotary_emb.inv_freq"
    rewrite_single(single, lambda s: s.__setitem__(key, torch.ones(4)))
    with pytest.raises(CheckpointError, match=rf"unexpected.*{key}.*{SINGLE_FILE}"):
        load(single)


def test_shape_mismatch(single: Path) -> None:
    key = "model.layers.7.self_attn.k_proj.weight"  # the softmax layer
    rewrite_single(single, lambda s: s.__setitem__(key, s[key][:-1].clone()))
    with pytest.raises(CheckpointError, match=rf"{SINGLE_FILE}.*{key}.*shape"):
        load(single)


def test_non_float_dtype(single: Path) -> None:
    key = "model.norm.weight"
    rewrite_single(single, lambda s: s.__setitem__(key, s[key].to(torch.int32)))
    with pytest.raises(CheckpointError, match=rf"{SINGLE_FILE}.*{key}.*I32"):
        load(single)


def test_tensor_stored_twice(sharded: Path, small_model: MiniMaxForCausalLM) -> None:
    key = "model.norm.weight"
    index = json.loads((sharded / INDEX_FILE).read_text())
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != index["weight_map"][key])
    extra = load_file(sharded / other)
    extra[key] = small_model.state_dict()[key].clone()
    save_file(extra, str(sharded / other))
    with pytest.raises(CheckpointError, match=key):
        load(sharded)


def test_missing_config_json(single: Path) -> None:
    (single / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json"):
        load(single)


def test_no_weights_at_all(single: Path) -> None:
    (single / SINGLE_FILE).unlink()
    with pytest.raises(CheckpointError, match=SINGLE_FILE):
        load(single)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        load(tmp_path / "nowhere")



# ------------------------------------------------------------------ non-finite weights
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_is_refused(single: Path, bad: float, capsys: pytest.CaptureFixture[str]) -> None:
    key = "model.layers.3.block_sparse_moe.experts.1.w2.weight"

    def poison(state: dict[str, torch.Tensor]) -> None:
        state[key] = state[key].to(torch.bfloat16)
        state[key][2, 3] = bad

    rewrite_single(single, poison)
    for quantize in (None, "int8"):  # also when the float tensor is quantized while loading
        with pytest.raises(CheckpointError, match=rf"{SINGLE_FILE}: tensor '{key}' holds 1 non-finite value"):
            MiniMaxForCausalLM.from_pretrained(single, dtype=torch.float32, progress=False, quantize=quantize)
    unchecked = MiniMaxForCausalLM.from_pretrained(single, dtype=torch.float32, progress=True, check_weights=False)
    assert unchecked.load_stats.check_seconds is None
    assert "NaN/inf" not in capsys.readouterr().err  # skipped: no cost line


def test_weight_check_cost_is_reported(single: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = MiniMaxForCausalLM.from_pretrained(single, dtype=torch.float32, progress=True)
    assert model.load_stats.check_seconds is not None and model.load_stats.check_seconds >= 0
    err = capsys.readouterr().err
    assert f"weights checked for NaN/inf in {model.load_stats.check_seconds:.2f} s" in err
    assert f"({model.load_stats.tensors_read} tensors)" in err
