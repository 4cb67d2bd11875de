"""generate(): the in-process client of LLMEngine. Results are compared with the engine run directly (which
test_engine.py checks against the full-forward oracle); token equality is exact for the reason given there."""

from __future__ import annotations


import pytest
import torch

from minimax01.engine import LLMEngine
from minimax01.errors import RequestError
from minimax01.generation import GenerationOutput, StreamEvent, generate
from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.sampling_params import SamplingParams


PROMPTS = [[5, 17, 300, 42], [7, 8, 9, 10, 11, 12, 13, 14, 15], [200]]


def engine_tokens(model: MiniMaxForCausalLM, ids: list[int], params: SamplingParams) -> list[int]:
    eng = LLMEngine(model, max_model_len=64)
    rid = eng.add_request(ids, params)
    out: list[int] = []
    while eng.has_unfinished():
        out += [t for o in eng.step() if o.request_id == rid for t in o.new_token_ids]
    return out


def test_greedy_lists_match_engine(model: MiniMaxForCausalLM) -> None:
    res = generate(model, PROMPTS, max_new_tokens=5)
    assert isinstance(res, GenerationOutput)
    assert res.prompt_lens == [4, 9, 1] and res.finish_reasons == ["length"] * 3 and res.texts is None
    for ids, seq in zip(PROMPTS, res.sequences):
        assert seq == engine_tokens(model, ids, SamplingParams(temperature=0.0, max_new_tokens=5))
    # The model method is the same function.
    assert model.generate(PROMPTS, max_new_tokens=5).sequences == res.sequences


def test_left_padded_tensor_equals_lists(model: MiniMaxForCausalLM) -> None:
    width = max(map(len, PROMPTS))
    input_ids = torch.zeros(len(PROMPTS), width, dtype=torch.long)  # [B, width], pad id 0 on the left
    mask = torch.zeros_like(input_ids)
    for b, p in enumerate(PROMPTS):
        input_ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    padded = generate(model, input_ids, attention_mask=mask, max_new_tokens=4)
    assert padded.sequences == generate(model, PROMPTS, max_new_tokens=4).sequences
    assert padded.prompt_lens == [4, 9, 1]


def test_seeded_sampling(model: MiniMaxForCausalLM) -> None:
    kw = dict(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=0.9)
    a = generate(model, PROMPTS[:2], seed=[11, 12], **kw)
    assert generate(model, PROMPTS[:2], seed=[11, 12], **kw).sequences == a.sequences
    # A row depends on its own seed only, not on its neighbours; an int seed gives row i seed + i.
    assert generate(model, [PROMPTS[1]], seed=[12], **kw).sequences[0] == a.sequences[1]
    assert generate(model, PROMPTS[:2], seed=11, **kw).sequences == a.sequences
    assert a.sequences[0] == engine_tokens(model, PROMPTS[0], SamplingParams(temperature=1.0, top_p=0.9, seed=11,
                                                                             max_new_tokens=6))


def test_stop_token_ids_replace_default(model: MiniMaxForCausalLM) -> None:
    full = generate(model, [PROMPTS[0]], max_new_tokens=6).sequences[0]
    res = generate(model, [PROMPTS[0]], max_new_tokens=6, stop_token_ids=[full[2]])
    assert res.sequences[0] == full[: full.index(full[2]) + 1] and res.finish_reasons == ["stop"]
    assert generate(model, [PROMPTS[0]], max_new_tokens=6, stop_token_ids=[full[2]],
                    ignore_eos=True).sequences[0] == full


def test_stream_concatenates_to_result(model: MiniMaxForCausalLM, tokenizer) -> None:  # noqa: ANN001
    prompts = ["import json\n", "def f(x):\n    return"]
    kw = dict(prompts=prompts, tokenizer=tokenizer, max_new_tokens=10, stop_token_ids=[])
    res = generate(model, **kw)
    assert res.texts == [tokenizer.decode(s) for s in res.sequences]
    # Stop at a piece of row 1's text: the cut is exact in both modes.
    stop = res.texts[1][3:5]
    kw["stop"] = [stop]
    res = generate(model, **kw)
    assert res.finish_reasons[1] == "stop" and stop not in res.texts[1]
    events = list(generate(model, stream=True, **kw))
    assert all(isinstance(e, StreamEvent) for e in events)
    for i in range(len(prompts)):
        mine = [e for e in events if e.index == i]
        assert [e.token_id for e in mine] == res.sequences[i]
        assert "".join(e.text for e in mine) == res.texts[i]
        assert [e.finished for e in mine] == [False] * (len(mine) - 1) + [True]
        assert mine[-1].finish_reason == res.finish_reasons[i]


def test_generate_errors(model: MiniMaxForCausalLM) -> None:
    with pytest.raises(RequestError, match="exactly one"):
        generate(model, PROMPTS, prompts=["x"])
    with pytest.raises(RequestError, match="tokenizer"):
        generate(model, prompts=["x"])
    with pytest.raises(RequestError, match="prompt 1"):
        generate(model, [[1], []])
    with pytest.raises(RequestError, match="attention_mask"):
        generate(model, torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(RequestError, match="max_new_tokens"):
        generate(model, PROMPTS, max_new_tokens=0)
    with pytest.warns(UserWarning, match="do_sample"):
        generate(model, [[1]], max_new_tokens=1, temperature=0.5)
