"""Prompt logprobs in the engine: the scores of prompt tokens equal a log_softmax over the model's own full-forward
logits, whatever the chunking, batching or preemption; only the requests that ask get them."""

from __future__ import annotations

import pytest
import torch

from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.engine import LLMEngine
from minimax01.engine.prompt_logprobs import score_rows
from minimax01.errors import RequestError
from minimax01.sampling_params import SamplingParams

from test_engine import engine, prompt, run, tokens


def reference_scores(model: MiniMaxForCausalLM, ids: list[int]) -> torch.Tensor:
    """log_softmax of the full forward: row q scores token q + 1."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)


def check_scores(model: MiniMaxForCausalLM, ids: list[int], scores: list, top_n: int) -> None:
    ref = reference_scores(model, ids)
    assert [s.token_id for s in scores] == ids[1:]
    for q, s in enumerate(scores):
        assert s.logprob == pytest.approx(float(ref[q, ids[q + 1]]), abs=1e-4)
        assert s.rank == int((ref[q] > ref[q, ids[q + 1]] + 1e-6).sum()) + 1
        ref_top = ref[q].topk(top_n)
        assert [t for t, _ in s.top] == ref_top.indices.tolist()
        assert [v for _, v in s.top] == pytest.approx(ref_top.values.tolist(), abs=1e-4)


@pytest.mark.parametrize("budget", [512, 7])  # whole prompt in one step / chunked prefill across steps
def test_prompt_scores_match_full_forward(model: MiniMaxForCausalLM, budget: int) -> None:
    scored, plain = prompt(23, 1), prompt(9, 2)
    eng = engine(model, max_num_batched_tokens=budget, max_num_seqs=3)
    rid = eng.add_request(scored, SamplingParams(temperature=0.0, max_new_tokens=3, prompt_logprobs=3))
    other = eng.add_request(plain, SamplingParams(temperature=0.0, max_new_tokens=3))
    outs = run(eng)
    with_scores = [o for o in outs[rid] if o.prompt_logprobs is not None]
    assert len(with_scores) == 1 and with_scores[0] is outs[rid][0]  # once, with the first token
    check_scores(model, scored, with_scores[0].prompt_logprobs, 3)
    assert all(o.prompt_logprobs is None for o in outs[other])
    # Scoring rows do not disturb generation, neither the request's own nor its neighbour's.
    alone = engine(model)
    a, b = (alone.add_request(p, SamplingParams(temperature=0.0, max_new_tokens=3)) for p in (scored, plain))
    ref = run(alone)
    assert tokens(outs[rid]) == tokens(ref[a]) and tokens(outs[other]) == tokens(ref[b])


def test_logits_rows_stay_within_the_step_budget(model: MiniMaxForCausalLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt longer than the token budget is scored chunk by chunk (never one [prompt, vocab] tensor), and a
    request that does not ask costs one logits row per step, as without prompt logprobs."""
    budget, long_prompt = 16, prompt(60, 9)
    eng = engine(model, max_num_batched_tokens=budget)
    rows: list[tuple[int, int]] = []  # per step: (logits rows, sequences)
    real_step = model.step

    def recording(tokens, batch, store, logits_index=None):  # noqa: ANN001, ANN202
        logits = real_step(tokens, batch, store, logits_index)
        rows.append((logits.shape[0], len(batch.slots)))
        return logits

    monkeypatch.setattr(model, "step", recording)
    plain = eng.add_request(prompt(5, 10), SamplingParams(temperature=0.0, max_new_tokens=8))
    first_step = eng.step()  # the plain request alone: one row
    assert rows == [(1, 1)] and first_step[0].request_id == plain
    scored = eng.add_request(long_prompt, SamplingParams(max_new_tokens=0, prompt_logprobs=2))
    outs = run(eng)
    monkeypatch.undo()
    assert max(r for r, _ in rows) <= budget and len(rows) >= 60 // budget
    check_scores(model, long_prompt, outs[scored][-1].prompt_logprobs, 2)


def test_zero_new_tokens_only_scores_the_prompt(model: MiniMaxForCausalLM) -> None:
    ids = prompt(12, 3)
    eng = engine(model, max_num_batched_tokens=5)
    rid = eng.add_request(ids, SamplingParams(max_new_tokens=0, prompt_logprobs=0))
    (out,) = run(eng)[rid]
    assert out.finished and out.finish_reason == "length" and out.new_token_ids == [] and out.completion_tokens == 0
    check_scores(model, ids, out.prompt_logprobs, 0)
    assert eng.stats().used_kv_blocks == 0 and eng.stats().prompt_tokens_total == 12


def test_preempted_request_scores_each_prompt_token_once(model: MiniMaxForCausalLM) -> None:
    prompts = [prompt(6, 30 + i) for i in range(3)]
    eng = engine(model, max_num_seqs=3, kv_block_size=2, num_kv_blocks=8)
    ids = [eng.add_request(p, SamplingParams(temperature=0.0, max_new_tokens=6, prompt_logprobs=1)) for p in prompts]
    outs = run(eng)
    assert eng.stats().preemptions_total >= 1
    for rid, p in zip(ids, prompts):
        (scores,) = [o.prompt_logprobs for o in outs[rid] if o.prompt_logprobs is not None]
        check_scores(model, p, scores, 1)


def test_non_finite_prompt_rows_fail_only_that_request(model: MiniMaxForCausalLM,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    eng = engine(model)
    good, bad = prompt(5, 40), prompt(6, 42)
    rg = eng.add_request(good, SamplingParams(temperature=0.0, max_new_tokens=3))
    rb = eng.add_request(bad, SamplingParams(temperature=0.0, max_new_tokens=3, prompt_logprobs=1))
    real_step = model.step

    def poisoned(tokens, batch, store, logits_index=None):  # noqa: ANN001, ANN202
        logits = real_step(tokens, batch, store, logits_index)
        if len(logits) > len(batch.slots):  # both prompts in one step: 2 sampling rows, then the scoring rows
            logits[len(batch.slots):] = float("nan")
        return logits

    monkeypatch.setattr(model, "step", poisoned)
    outs = run(eng)
    monkeypatch.undo()
    (last_bad,) = outs[rb]
    assert last_bad.finish_reason == "error" and "non-finite" in last_bad.error and not last_bad.new_token_ids
    alone = engine(model)
    ra = alone.add_request(good, SamplingParams(temperature=0.0, max_new_tokens=3))
    assert tokens(outs[rg]) == tokens(run(alone)[ra])
    assert eng.stats().used_kv_blocks == 0 and eng.stats().free_slots == eng.max_num_seqs


def test_long_rows_are_scored_in_slices() -> None:
    logits = torch.randn(150, 40, generator=torch.Generator().manual_seed(0))  # > 2 slices of 64 rows
    targets = torch.randint(0, 40, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    scores = score_rows(logits, targets, 2)
    ref = torch.log_softmax(logits, dim=-1)
    assert [s.logprob for s in scores] == pytest.approx(ref[torch.arange(150), targets].tolist(), abs=1e-6)
    assert [s.top[0][0] for s in scores] == ref.argmax(dim=1).tolist()


@pytest.mark.parametrize(("params", "field"), [
    (SamplingParams(max_new_tokens=0), "max_new_tokens"),
    (SamplingParams(prompt_logprobs=21), "prompt_logprobs"),
    (SamplingParams(prompt_logprobs=-1), "prompt_logprobs"),
])
def test_invalid_prompt_logprobs(model: MiniMaxForCausalLM, params: SamplingParams, field: str) -> None:
    with pytest.raises(RequestError, match=field):
        LLMEngine(model, max_model_len=64).add_request([1, 2, 3], params)
