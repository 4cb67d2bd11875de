"""int8 after sharding does not depend on the layout: a row-parallel weight (attention out projections split by
heads, experts' w2 split by intermediate dim) is quantized with the scale of its WHOLE row (the shards agree on
the row's max |w| through an all-reduce), so every rank holds exactly the int8 values and scales that one
process quantizing the full model holds, and the logits equal single-process int8 up to the order of the sums.
CPU, gloo, forked ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.config import MiniMaxConfig
from minimax01.parallel.group import Layout, init_distributed
from minimax01.parallel.launch import spawn
from minimax01.parallel.loading import init_parallel_model
from minimax01.parallel.shard import ownership
from minimax01.parallel.worker import greedy
from minimax01.quant import quantize_
from conftest import make_model, random_ids

# (world, tp, ep): heads and every expert's intermediate dim split 2 ways; on 4 ranks 2 expert groups whose w2
# rows are split inside each group (a subgroup all-reduce).
LAYOUTS = [(2, 2, 1), (4, 2, 2)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    config = MiniMaxConfig.preset("tiny")
    ckpt = tmp_path_factory.mktemp("int8") / "ckpt"
    make_model(config, dtype=torch.float32).save_pretrained(ckpt)
    ids = random_ids(1, 20, config.vocab_size, seed=4)
    single = MiniMaxForCausalLM.from_pretrained(ckpt, dtype=torch.float32, progress=False, quantize="int8")
    return {"config": config, "ckpt": ckpt, "ids": ids, "single": single.state_dict(),
            "ref": greedy(single, ids, steps=2)}


def _scales(state: dict[str, torch.Tensor], first_expert: int) -> dict[str, torch.Tensor]:
    """Row-parallel scales by global name (this rank numbers its experts from 0)."""
    out = {}
    for name, t in state.items():
        if name.endswith(("o_proj.weight_scale", "out_proj.weight_scale")):
            out[name] = t.clone()
        elif name.endswith("w2.weight_scale"):
            prefix, rest = name.split(".experts.")
            e, tail = rest.split(".", 1)
            out[f"{prefix}.experts.{int(e) + first_expert}.{tail}"] = t.clone()
    return out


def _rank(setup: dict, tp: int, ep: int, out_dir: Path) -> None:
    torch.set_num_threads(1)
    init_distributed("gloo", timeout_s=120)
    model = quantize_(init_parallel_model(setup["ckpt"], tp, ep, torch.float32, "cpu",
                                          model_cls=MiniMaxForCausalLM), "int8")
    layout = Layout(dist.get_world_size(), dist.get_rank(), tp, ep)
    first = ownership(setup["config"], layout).experts[0]
    r = greedy(model, setup["ids"], steps=2)
    torch.save({"scales": _scales(model.state_dict(), first), "prefill": r.prefill_logits, "steps": r.step_logits,
                "tokens": r.tokens}, out_dir / f"rank{dist.get_rank()}.pt")


@pytest.mark.parametrize("world,tp,ep", LAYOUTS)
def test_int8_after_sharding_equals_single_process(setup: dict, world: int, tp: int, ep: int,
                                                   tmp_path: Path) -> None:
    spawn(_rank, world, (setup, tp, ep, tmp_path), start_method="fork")
    ref = setup["ref"]
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["scales"], "no row-parallel scale found"
        for name, scale in got["scales"].items():
            assert torch.equal(scale, setup["single"][name]), name  # bit-identical: the whole row's max
        # fp32: only the order of the sums differs (partial products added by the all-reduce), ~1e-7 relative
        # per addition over 16 layers; the CPU layouts test bounds fp32 at 2e-4 of the largest logit.
        scale = ref.prefill_logits.abs().max()
        torch.testing.assert_close(got["prefill"], ref.prefill_logits, rtol=0, atol=2e-4 * float(scale))
        torch.testing.assert_close(got["steps"], ref.step_logits, rtol=0, atol=2e-4 * float(scale))
        assert torch.equal(got["tokens"], ref.tokens)
