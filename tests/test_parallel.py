"""Tensor / expert parallelism on CPU with gloo: 2 and 4 processes must give the logits and greedy tokens of one
process for TP, EP and both, and each rank must read only its own slices of the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import minimax01.checkpoint_reader as checkpoint_reader
import minimax01.parallel.loading as loading
from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.config import MiniMaxConfig
from minimax01.errors import CheckpointError, ConfigError
from minimax01.parallel.group import Layout, ParallelGroups, init_distributed
from minimax01.parallel.launch import spawn, torchrun_argv
from minimax01.parallel.loading import init_parallel_model, load_sharded
from minimax01.parallel.plan import make_plan, plan_report, rank_weight_bytes
from minimax01.parallel.shard import ownership, param_index, shard_
from minimax01.parallel.worker import GreedyResult, greedy
from conftest import make_model, random_ids, to_v5_names

STEPS = 3  # greedy decode steps after the prefill, through the 2-D call with its cache
# (tp, ep, dtype) per world size. Tiny config: 4 heads, 2 kv heads, 4 experts, I = 96. tp=4 > 2 kv heads
# exercises replicated kv heads; (1, ep) replicated attention; (2, 2) on 4 ranks the 2-D mesh.
LAYOUTS = {
    2: [(2, 1, torch.float64), (1, 2, torch.float64), (2, 2, torch.float64), (2, 2, torch.float32)],
    4: [(4, 1, torch.float64), (1, 4, torch.float64), (4, 4, torch.float64), (2, 2, torch.float64)],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An fp64 tiny checkpoint in 1 MiB shards (13 files, so shards without owned tensors exist), a left-padded
    batch, and the single-process references for fp64 and fp32."""
    config = MiniMaxConfig.preset("tiny")
    model = make_model(config)
    ckpt = tmp_path_factory.mktemp("parallel") / "ckpt"
    model.save_pretrained(ckpt, max_shard_bytes=2**20)
    ids = random_ids(2, 24, config.vocab_size, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    refs = {torch.float64: greedy(model, ids, mask, STEPS),
            torch.float32: greedy(make_model(config, dtype=torch.float32), ids, mask, STEPS)}
    # Build once on meta here: the first meta build imports torch's compiler stack (seconds); forked workers
    # inherit it instead of paying it again.
    load_sharded(ckpt, ParallelGroups.single(), torch.float64, progress=False)
    return {"config": config, "model": model, "ckpt": ckpt, "ids": ids, "mask": mask, "refs": refs}


# ---------------------------------------------------------------------------------------------- workers
class _RecordingHandle:
    """Wraps a safe_open handle: records every (key, bytes) actually read through get_slice."""

    def __init__(self, handle, log: list) -> None:  # noqa: ANN001
        self.handle, self.log = handle, log

    def __enter__(self) -> "_RecordingHandle":
        self.handle.__enter__()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.handle.__exit__(*exc)

    def keys(self):  # noqa: ANN201
        return self.handle.keys()

    def get_slice(self, key: str):  # noqa: ANN201
        sl, log = self.handle.get_slice(key), self.log

        class Slice:
            def get_dtype(self) -> str:
                return sl.get_dtype()

            def get_shape(self) -> list[int]:
                return sl.get_shape()

            def __getitem__(self, index):  # noqa: ANN001, ANN204
                t = sl[index]
                log.append((key, t.numel() * t.element_size()))
                return t

        return Slice()


def _worker(setup: dict, world: int, out_dir: Path) -> None:
    torch.set_num_threads(1)  # 4 processes share 2 cores
    init_distributed(timeout_s=60)  # a hang in a collective fails the test instead of blocking it
    rank = dist.get_rank()
    opened: list[str] = []
    reads: list[tuple[str, int]] = []
    real_open = checkpoint_reader.safe_open

    def recording_open(path: str, **kw):  # noqa: ANN003, ANN202
        opened.append(Path(path).name)
        return _RecordingHandle(real_open(path, **kw), reads)

    checkpoint_reader.safe_open = recording_open  # this process only (forked child)
    results = []
    for tp, ep, dtype in LAYOUTS[world]:
        opened.clear()
        reads.clear()
        model = init_parallel_model(setup["ckpt"], tp, ep, dtype, "cpu", model_cls=MiniMaxForCausalLM)
        local_bytes = sum(t.numel() * 8 for t in model.state_dict().values())  # the checkpoint is fp64
        r = greedy(model, setup["ids"], setup["mask"], STEPS)
        results.append({"layout": (tp, ep, str(dtype)), "prefill": r.prefill_logits, "tokens": r.tokens,
                        "steps": r.step_logits, "opened": list(opened), "reads": list(reads),
                        "local_bytes": local_bytes, "store_heads": model.new_store(1).lightning.shape[2]})
    torch.save(results, out_dir / f"rank{rank}.pt")


def _run(setup: dict, world: int, tmp_path: Path) -> list[list[dict]]:
    spawn(_worker, world, (setup, world, tmp_path), start_method="fork")  # fork: no re-import, starts in ms
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def _check_same(ref: GreedyResult, got: dict, dtype: torch.dtype) -> None:
    # fp64 compute: ranks differ from one process only in summation order (all-reduce of partial sums,
    # ~1e-15 relative), invisible after the cast of the public logits to fp32 beyond 1-2 fp32 ulps.
    # fp32 compute: ~1e-6 relative rounding per reduction, compounded over 16 layers of random weights.
    rel = 1e-6 if dtype == torch.float64 else 2e-4
    scale = ref.prefill_logits.abs().max().item()
    torch.testing.assert_close(got["prefill"], ref.prefill_logits, rtol=0, atol=rel * scale)
    torch.testing.assert_close(got["steps"], ref.step_logits, rtol=0, atol=rel * scale)
    assert torch.equal(got["tokens"], ref.tokens)


def _check_reads(setup: dict, world: int, results: list[list[dict]]) -> None:
    config = setup["config"]
    index = json.loads((setup["ckpt"] / "model.safetensors.index.json").read_text())["weight_map"]
    for rank, per_rank in enumerate(results):
        for res in per_rank:
            tp, ep, _ = res["layout"]
            own = ownership(config, Layout(world, rank, tp, ep))
            keys = [k for k, _ in res["reads"]]
            owned = {k for k in index if param_index(k, config, own) is not None}
            assert set(keys) == owned, res["layout"]  # every owned tensor, nothing of other ranks' experts
            # bytes read = exactly this rank's parameters: only owned slices were read, each once
            assert sum(n for _, n in res["reads"]) == res["local_bytes"]
            assert set(res["opened"]) == {index[k] for k in owned}  # shards without owned tensors stay closed
            assert res["store_heads"] == own.heads[1] - own.heads[0]


@pytest.mark.parametrize("world", [2, 4])
def test_parallel_matches_single_process(setup: dict, world: int, tmp_path: Path) -> None:
    results = _run(setup, world, tmp_path)
    for per_rank in results:  # every rank ends with the full logits (replicated lm_head after the all-reduces)
        for res, (tp, ep, dtype) in zip(per_rank, LAYOUTS[world]):
            _check_same(setup["refs"][dtype], res, dtype)
    _check_reads(setup, world, results)
    if world == 4:  # EP over 4 ranks: each rank holds 1 of the 4 experts and reads well under the whole model
        ep4 = [per_rank[1] for per_rank in results]
        total = sum(t.numel() * 8 for t in setup["model"].state_dict().values())
        assert all(r["local_bytes"] < 0.6 * total for r in ep4)


@pytest.mark.slow
def test_torchrun_worker(setup: dict) -> None:
    """The torchrun entry point end to end (env-based init, gloo, sharded load, greedy decode on every rank)."""
    ids = setup["ids"][0, :10]
    argv = torchrun_argv(2, "minimax01.parallel.worker", [
        "--model", str(setup["ckpt"]), "--tp", "2", "--ep", "2", "--dtype", "fp64",
        "--input-ids", ",".join(map(str, ids.tolist())), "--max-new-tokens", str(STEPS)])
    env = dict(os.environ, OMP_NUM_THREADS="1")  # 2 ranks on a small CI box: no OpenMP over-subscription
    out = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-6000:]
    printed = next(line for line in out.stdout.splitlines() if line.startswith("tokens:"))
    assert printed == f"tokens: {greedy(setup['model'], ids[None], steps=STEPS).tokens[0].tolist()}"
    assert "rank 1: read" in out.stdout


# ---------------------------------------------------------------------------------------------- no processes
def test_ownership_and_errors(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    config = setup["config"]
    # tp=4 > 2 kv heads: q heads 0,1 read kv head 0 and q heads 2,3 kv head 1 (GQA h // 2), so each rank keeps
    # the one kv head its q head needs.
    assert [ownership(config, Layout(4, r, 4, 1)).kv_heads for r in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [ownership(config, Layout(2, r, 2, 1)).kv_heads for r in range(2)] == [(0, 1), (1, 2)]
    # 2-D mesh tp=2 x ep=2: rank 3 = second expert group, second half of the intermediate dim
    own = ownership(config, Layout(4, 3, 2, 2))
    assert (own.heads, own.experts, own.inter) == ((2, 4), (2, 4), (48, 96))
    with pytest.raises(ConfigError, match="num_attention_heads"):
        ownership(config, Layout(3, 0, 3, 1))
    with pytest.raises(ConfigError, match="divide the number of processes"):
        Layout(4, 0, 3, 1)
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        init_distributed()


def test_shards_reassemble_full_model(setup: dict) -> None:
    """The parts of all ranks put back together are exactly the full tensors (for a 2-D mesh of 4 ranks)."""
    config, full = setup["config"], setup["model"].state_dict()
    parts = []
    for rank in range(4):
        model = make_model(config)
        shard_(model, ParallelGroups(Layout(4, rank, 2, 2)))
        parts.append(model.state_dict())
    for name in ("model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.norm.weight",
                 "model.layers.7.self_attn.q_proj.weight", "model.layers.7.self_attn.k_proj.weight"):
        assert torch.equal(torch.cat([parts[0][name], parts[1][name]]), full[name])  # tp block 0,1
    assert torch.equal(torch.cat([parts[0]["model.layers.0.self_attn.out_proj.weight"],
                                  parts[1]["model.layers.0.self_attn.out_proj.weight"]], 1),
                       full["model.layers.0.self_attn.out_proj.weight"])
    # expert 3 lives in group 1 (ranks 2, 3) as local expert 1, its intermediate dim split between them
    w = "model.layers.5.block_sparse_moe.experts.{}.{}.weight"
    assert torch.equal(torch.cat([parts[2][w.format(1, "w1")], parts[3][w.format(1, "w1")]]), full[w.format(3, "w1")])
    assert torch.equal(torch.cat([parts[2][w.format(1, "w3")], parts[3][w.format(1, "w3")]]), full[w.format(3, "w3")])
    assert torch.equal(torch.cat([parts[2][w.format(1, "w2")], parts[3][w.format(1, "w2")]], 1),
                       full[w.format(3, "w2")])
    assert torch.equal(parts[3]["lm_head.weight"], full["lm_head.weight"])  # replicated
    with pytest.raises(ValueError, match="already sharded"):
        shard_(model, ParallelGroups(Layout(4, 3, 2, 2)))


def test_sharded_loading_v5_names_and_errors(setup: dict, tmp_path: Path) -> None:
    """One process through the sharded loader = the model; v5 tensor names load into the same slices;
    a missing tensor is reported."""
    from safetensors.torch import save_file

    config, model = setup["config"], setup["model"]
    loaded = load_sharded(setup["ckpt"], ParallelGroups.single(), torch.float64, progress=False)
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    v5 = tmp_path / "v5"
    config.save_pretrained(v5)
    state = {k: t.contiguous().clone() for k, t in model.state_dict().items()}
    save_file(to_v5_names(state, config.num_local_experts), str(v5 / "model.safetensors"))
    # rank 1 of the 2-D mesh: second kv half, experts 0-1, second half of I; compare with slicing the full model
    layout = Layout(4, 1, 2, 2)
    reference = shard_(make_model(config), ParallelGroups(layout)).state_dict()
    part = loading.load_sharded(v5, ParallelGroups(layout), torch.float64, progress=False).state_dict()
    assert part.keys() == reference.keys()
    for name, t in reference.items():
        assert torch.equal(part[name], t), name
    (v5 / "model.safetensors").unlink()
    state.pop("model.layers.3.self_attn.output_gate.weight")
    save_file(state, str(v5 / "model.safetensors"))
    with pytest.raises(CheckpointError, match="output_gate"):
        load_sharded(v5, ParallelGroups(layout), torch.float64, progress=False)


# ---------------------------------------------------------------------------------------------- plan
def test_plan_arithmetic() -> None:
    config = MiniMaxConfig.preset("text-01")
    # one GPU holds the whole checkpoint: the same bytes as the config's own arithmetic
    for dtype in ("bf16", "int8"):
        assert sum(rank_weight_bytes(config, Layout(), dtype).values()) == config.weight_bytes(dtype)
    p = make_plan(config, context=1_000_000, gpus=8, dtype="bf16", tp=8, ep=8)
    # 8 ways: attention and experts / 8, embeddings + lm_head (2 x 200064 x 6144 bf16) replicated
    assert p.weights["experts"] * 8 == config.param_counts()["experts"] * 2
    assert p.weights["embeddings + lm_head"] == 2 * 2 * 200064 * 6144
    assert p.kv_per_token == 10 * 2 * 1 * 128 * 2  # 10 softmax layers, 1 of 8 kv heads, k and v, bf16
    assert p.state_per_seq == 70 * 8 * 128 * 128 * 4  # 70 lightning layers, 8 of 64 heads, fp32
    # ring all-reduce of one bf16 hidden vector: 2 (n-1)/n x 12288 bytes
    assert p.comm_per_token["attention all-reduce (tp)"] == pytest.approx(2 * 7 / 8 * 6144 * 2)
    assert p.max_seqs >= 1  # 1M tokens fit on 8 x H200 in bf16
    two_nodes = make_plan(config, context=1_000_000, gpus=16, dtype="bf16", tp=8, ep=2)
    # the MoE all-reduce crosses nodes (50 GB/s vs 450 GB/s): slower than on one node
    assert two_nodes.step_time["MoE all-reduces"] > p.step_time["MoE all-reduces"]
    report = plan_report(config, 1_000_000, 8, "int8", 8, 1)
    assert "NVLink 450 GB/s" in report and "Decode step" in report
    assert "DOES NOT FIT" in plan_report(config, 1_000_000, 1, "bf16", 1, 1)


def test_plan_uses_measured_hardware(tmp_path: Path) -> None:
    """`minimax01 plan --measured FILE`: the bandwidths and the all-reduce latency of a bench/decode_step.py
    measurement replace the datasheet numbers, and its decode steps are printed beside the model's."""
    from minimax01.cli import main
    from minimax01.parallel.plan import Hardware, measured_comparison, measured_hardware

    data = {"copy_Bps": 2.0e12, "allreduce_bus_Bps": 100e9, "gpus": 2, "gpu": "TestGPU", "context": 1024,
            "layers": 8, "allreduce_us": {"hidden states x1": 20.0, "hidden states x16": 21.0},
            "decode_step_ms": {"tp1 batch1": 30.0, "tp2 batch1": 17.5}}
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(data))
    hw, raw = measured_hardware(path)
    assert (hw.hbm_Bps, hw.nvlink_Bps, hw.latency_intra_s) == (2.0e12, 100e9, pytest.approx(20e-6))
    config = MiniMaxConfig.preset("text-01")
    # 2 TB/s measured instead of the datasheet's 4.8: the same bytes take 2.4 x as long
    measured, sheet = (make_plan(config, 1_000_000, 8, tp=8, hw=h).step_time for h in (hw, Hardware()))
    assert measured["HBM reads"] == pytest.approx(sheet["HBM reads"] * 4.8 / 2.0)
    lines = measured_comparison(raw, hw)
    assert "2 x TestGPU" in lines[0] and len(lines) == 3
    assert "1 GPU(s), batch   1" in lines[1] and "measured  30.000 ms" in lines[1]
    # the model's 1-GPU step is the 8 layers' bytes at 2 TB/s: no all-reduce term
    one = make_plan(MiniMaxConfig.preset_slice("text-01", 8), 1024, 1, tp=1, hw=hw)
    assert f"model {sum(one.step_time.values()) * 1e3:7.3f} ms" in lines[1]
    assert main(["plan", "--measured", str(path)]) == 0
    path.write_text(json.dumps({"copy_Bps": 1}))
    with pytest.raises(ConfigError, match="missing or malformed field"):
        measured_hardware(path)


def test_torchrun_argv() -> None:
    argv = torchrun_argv(8, "minimax01.parallel.worker", ["--model", "m"])
    assert argv[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=8", "--standalone", "-m",
                        "minimax01.parallel.worker", "--model", "m"]
