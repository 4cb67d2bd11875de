"""LLMEngine: continuous batching must not change what a request generates.

The oracle is the plain 2-D model call on the growing sequence (argmax of the last position). Token equality
is exact on purpose: the tiny fp32 model's logits differ between the batched / chunked / recurrent paths only
by rounding (~1e-6), far below the gap between the best two logits of a random model, so a real mistake
(wrong slot, position, chunk boundary or state) shows up as a different token.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from minimax01.engine import LLMEngine, RequestOutput
from minimax01.errors import RequestError
from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.sampling_params import SamplingParams


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def greedy(n: int, **kw) -> SamplingParams:  # noqa: ANN003
    return SamplingParams(temperature=0.0, max_new_tokens=n, **kw)


def engine(model: MiniMaxForCausalLM, **kw) -> LLMEngine:  # noqa: ANN003
    kw.setdefault("max_model_len", 128)
    kw.setdefault("kv_block_size", 4)  # small pages so that every test crosses page boundaries
    return LLMEngine(model, **kw)


def run(eng: LLMEngine, on_step=None) -> dict[str, list[RequestOutput]]:  # noqa: ANN001
    """Steps until done; outputs grouped by request id. `on_step(eng, outputs)` sees every step."""
    outs: dict[str, list[RequestOutput]] = defaultdict(list)
    while eng.has_unfinished():
        step = eng.step()
        for o in step:
            outs[o.request_id].append(o)
        if on_step is not None:
            on_step(eng, step)
    return outs


def tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def alone(model: MiniMaxForCausalLM, ids: list[int], params: SamplingParams, **kw) -> list[int]:  # noqa: ANN003
    eng = engine(model, **kw)
    rid = eng.add_request(ids, params)
    return tokens(run(eng)[rid])


def reference_greedy(model: MiniMaxForCausalLM, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1]  # full forward of the whole sequence
        seq.append(int(logits.argmax()))
    return seq[len(ids):]


def test_greedy_batched_matches_full_forward(model: MiniMaxForCausalLM) -> None:
    prompts = [prompt(3, 1), prompt(9, 2), prompt(17, 3)]
    eng = engine(model, max_num_seqs=4)
    ids = [eng.add_request(p, greedy(6, logprobs=2)) for p in prompts]
    outs = run(eng)
    for p, rid in zip(prompts, ids):
        assert tokens(outs[rid]) == reference_greedy(model, p, 6)
        last = outs[rid][-1]
        assert last.finished and last.finish_reason == "length" and last.completion_tokens == 6
        assert last.prompt_tokens == len(p)
        assert all(not o.finished for o in outs[rid][:-1])
        for o in outs[rid]:  # greedy token = the most likely one, reported first
            assert len(o.logprobs) == 1 and len(o.top_logprobs[0]) == 2
            assert o.top_logprobs[0][0][0] == o.new_token_ids[0]
            assert o.logprobs[0] == pytest.approx(o.top_logprobs[0][0][1])
    stats = eng.stats()
    assert stats.prompt_tokens_total == sum(map(len, prompts)) and stats.generation_tokens_total == 18
    assert stats.finished_requests_total == 3 and stats.used_kv_blocks == 0 and stats.free_slots == 4


def test_seeded_results_do_not_depend_on_batch(model: MiniMaxForCausalLM) -> None:
    a = SamplingParams(temperature=0.9, top_p=0.95, seed=7, max_new_tokens=6)
    b = SamplingParams(temperature=1.0, top_k=50, seed=3, max_new_tokens=4, presence_penalty=0.5)
    pa, pb, pc = prompt(5, 4), prompt(11, 5), prompt(8, 6)
    eng = engine(model, max_num_seqs=3)
    ra, rb = eng.add_request(pa, a), eng.add_request(pb, b)
    eng.add_request(pc, SamplingParams(temperature=1.0, max_new_tokens=5))  # unseeded neighbour
    outs = run(eng)
    assert tokens(outs[ra]) == alone(model, pa, a)
    assert tokens(outs[rb]) == alone(model, pb, b)
    assert tokens(outs[ra]) != alone(model, pa, SamplingParams(temperature=0.9, top_p=0.95, seed=8,
                                                                max_new_tokens=6))  # the seed matters


def test_chunked_prefill_interleaves_with_decode(model: MiniMaxForCausalLM) -> None:
    pa, pb = prompt(5, 7), prompt(30, 8)
    eng = engine(model, max_num_batched_tokens=8)
    ra = eng.add_request(pa, greedy(12))
    log: list[tuple[set[str], int, int]] = []  # per step: ids with output, sequences, tokens

    def on_step(e: LLMEngine, step: list[RequestOutput]) -> None:
        s = e.stats()
        log.append(({o.request_id for o in step}, s.last_step_num_seqs, s.last_step_num_tokens))

    outs = defaultdict(list)
    while len(outs[ra]) < 2:  # A is decoding when B arrives
        for o in eng.step():
            outs[o.request_id].append(o)
    rb = eng.add_request(pb, greedy(3))
    for rid, o in run(eng, on_step).items():
        outs[rid].extend(o)
    # B's 30-token prompt needs several steps of at most 8 tokens; A produced a token in each of them.
    prefill_steps = [entry for entry in log if rb not in entry[0]][: 30 // 7]
    assert len(prefill_steps) >= 4
    assert all(ids == {ra} and seqs == 2 and n == 8 for ids, seqs, n in prefill_steps)
    assert max(n for _, _, n in log) <= 8
    assert tokens(outs[ra]) == alone(model, pa, greedy(12))
    assert tokens(outs[rb]) == reference_greedy(model, pb, 3)


def test_stop_token(model: MiniMaxForCausalLM) -> None:
    p = prompt(6, 9)
    full = alone(model, p, greedy(8))
    stop = full[4]
    cut = full[: full.index(stop) + 1]  # the stop token is reported, then nothing
    eng = engine(model)
    rid = eng.add_request(p, greedy(8, stop_token_ids=[stop]))
    outs = run(eng)[rid]
    assert tokens(outs) == cut
    assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason == stop
    # The engine's default stop ids (EOS) end a request too, unless ignore_eos.
    assert alone(model, p, greedy(8), default_stop_token_ids=[stop]) == cut
    assert alone(model, p, greedy(8, ignore_eos=True), default_stop_token_ids=[stop]) == full


def test_stop_strings_cut_text_exactly(model: MiniMaxForCausalLM, tokenizer) -> None:  # noqa: ANN001
    p = tokenizer.encode("def parse(text):\n    return")
    eng = engine(model, tokenizer=tokenizer)
    rid = eng.add_request(p, greedy(24, ignore_eos=True))
    outs = run(eng)[rid]
    full_ids = tokens(outs)
    full_text = "".join(o.new_text for o in outs)
    assert full_text == tokenizer.decode(full_ids)  # incremental detokenization is exact
    # A stop string that starts inside one token and ends inside the next.
    k = next(k for k in range(len(full_ids) // 2, len(full_ids))
             if full_text.startswith(tokenizer.decode(full_ids[:k])) and len(tokenizer.decode(full_ids[:k])) >= 2)
    b = len(tokenizer.decode(full_ids[:k]))
    stop = full_text[b - 2: b + 2]
    expected = full_text[: full_text.find(stop)]
    eng = engine(model, tokenizer=tokenizer)
    rid = eng.add_request(p, greedy(24, ignore_eos=True, stop=["\x00never", stop]))
    outs = run(eng)[rid]
    assert "".join(o.new_text for o in outs) == expected
    assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason == stop
    got = tokens(outs)  # a prefix of the unstopped run, ending with the token that completes the stop string
    assert got == full_ids[: len(got)]
    assert stop in tokenizer.decode(got) and stop not in tokenizer.decode(got[:-1])


def test_abort_frees_slot_and_blocks(model: MiniMaxForCausalLM) -> None:
    eng = engine(model, max_num_seqs=2)
    ra, rb, rc = (eng.add_request(prompt(10, s), greedy(6)) for s in (10, 11, 12))
    eng.step()
    eng.step()
    before = eng.stats()
    assert (before.running, before.waiting, before.free_slots) == (2, 1, 0)
    blocks_a = len(eng.store.block_tables[eng.scheduler.running[0].slot])
    assert blocks_a > 0
    assert eng.abort(ra) and eng.abort(rc) and not eng.abort("unknown")
    after = eng.stats()
    assert (after.running, after.waiting, after.free_slots) == (1, 0, 1)
    assert after.used_kv_blocks == before.used_kv_blocks - blocks_a
    outs = run(eng)
    for rid in (ra, rc):
        assert [(o.finished, o.finish_reason, o.new_token_ids) for o in outs[rid]] == [(True, "abort", [])]
    assert outs[rb][-1].finish_reason == "length"
    assert not eng.abort(rb)  # already finished
    final = eng.stats()
    assert final.used_kv_blocks == 0 and final.free_slots == 2 and final.finished_requests_total == 3


def test_queueing_beyond_max_num_seqs(model: MiniMaxForCausalLM) -> None:
    eng = engine(model, max_num_seqs=2)
    ids = [eng.add_request(prompt(4 + i, 20 + i), greedy(3)) for i in range(5)]
    seen_running: list[int] = []
    outs = run(eng, lambda e, _: seen_running.append(e.stats().running))
    assert max(seen_running) == 2
    assert all(len(tokens(outs[r])) == 3 and outs[r][-1].finish_reason == "length" for r in ids)


def test_pool_sized_for_full_length_admits_every_sequence(model: MiniMaxForCausalLM) -> None:
    """The default pool holds max_num_seqs sequences of max_model_len tokens: all of them run together (the
    admission keeps only the blocks the next token needs in hand, not one per sequence), without preemption."""
    eng = engine(model, max_num_seqs=4, max_model_len=16, kv_block_size=8)  # 2 blocks per sequence, 8 in all
    ids = [eng.add_request(prompt(14, 40 + i), greedy(2)) for i in range(4)]  # 16 tokens: 2 full blocks
    running: list[int] = []
    outs = run(eng, lambda e, _: running.append(e.stats().running))
    assert max(running) == 4 and eng.stats().preemptions_total == 0
    assert all(len(tokens(outs[r])) == 2 for r in ids)


def test_kv_exhaustion_waits_and_preempts(model: MiniMaxForCausalLM) -> None:
    # Each request needs 12 tokens = 6 blocks of 2; together they need 18 of the 8 blocks.
    prompts = [prompt(6, 30 + i) for i in range(3)]
    ample = engine(model, max_num_seqs=3, kv_block_size=2)
    ids = [ample.add_request(p, greedy(6)) for p in prompts]
    expected = {r: tokens(o) for r, o in run(ample).items()}
    eng = engine(model, max_num_seqs=3, kv_block_size=2, num_kv_blocks=8)
    for r, p in zip(ids, prompts):
        eng.add_request(p, greedy(6), request_id=r)
    waited: list[int] = []
    outs = run(eng, lambda e, _: waited.append(e.stats().waiting))
    assert {r: tokens(o) for r, o in outs.items()} == expected
    assert max(waited) >= 1 and eng.stats().preemptions_total >= 1
    assert eng.stats().used_kv_blocks == 0


@pytest.mark.parametrize(
    ("ids", "params", "field"),
    [
        ([], greedy(2), "prompt"),
        ([1, 512], greedy(2), "prompt token 1"),
        ([-1], greedy(2), "prompt token 0"),
        ([1, True], greedy(2), "prompt token 1"),
        ([1] * 100, greedy(29), "max_new_tokens"),
        ([1] * 128, greedy(1), "max_model_len"),
        ([1, 2], SamplingParams(temperature=-1.0), "temperature"),
        ([1, 2], greedy(2, stop=["x"]), "stop strings need a tokenizer"),
    ],
)
def test_invalid_requests(model: MiniMaxForCausalLM, ids: list, params: SamplingParams, field: str) -> None:
    eng = engine(model)
    with pytest.raises(RequestError, match=field):
        eng.add_request(ids, params)
    assert not eng.has_unfinished()


def test_invalid_request_ids_and_kv_budget(model: MiniMaxForCausalLM) -> None:
    eng = engine(model, num_kv_blocks=4)  # 16 tokens of KV at most
    assert eng.max_model_len == 128  # explicit max_model_len is kept; the KV check catches the rest
    with pytest.raises(RequestError, match="KV cache"):
        eng.add_request([1] * 10, greedy(10))
    eng.add_request([1, 2], greedy(2), request_id="x")
    with pytest.raises(RequestError, match="already in use"):
        eng.add_request([1, 2], greedy(2), request_id="x")
    with pytest.raises(ValueError, match="max_num_seqs"):
        LLMEngine(model, max_num_seqs=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        LLMEngine(model, max_model_len=model.config.max_position_embeddings + 1)


def test_model_error_fails_only_the_step_requests(model: MiniMaxForCausalLM, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = engine(model)
    ra = eng.add_request(prompt(5, 40), greedy(4))
    eng.step()
    rb = eng.add_request(prompt(7, 41), greedy(4))

    def boom(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("device lost")

    monkeypatch.setattr(model, "step", boom)
    with pytest.raises(RuntimeError, match="device lost"):
        eng.step()
    monkeypatch.undo()
    outs = eng.step()  # the failed requests' final outputs; their slots and blocks are already free
    assert sorted((o.request_id, o.finish_reason) for o in outs) == sorted([(ra, "error"), (rb, "error")])
    assert eng.stats().used_kv_blocks == 0 and eng.stats().free_slots == eng.max_num_seqs
    rc = eng.add_request(prompt(5, 40), greedy(4))  # the engine still works
    assert tokens(run(eng)[rc]) == alone(model, prompt(5, 40), greedy(4))


def test_non_finite_logits_fail_only_that_request(model: MiniMaxForCausalLM, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = engine(model)
    good, bad = prompt(5, 40), prompt(6, 42)
    rg = eng.add_request(good, greedy(4, logprobs=2))
    rb = eng.add_request(bad, greedy(4, logprobs=2))
    real_step = model.step

    def poisoned(tokens, batch, store, logits_index=None):  # noqa: ANN001, ANN202
        logits = real_step(tokens, batch, store, logits_index)
        slot = eng._requests[rb].slot if rb in eng._requests else None
        if slot in batch.slots:  # both prompts are prefilled in one step: every chunk samples, row i = chunk i
            logits[batch.slots.index(slot)] = float("nan")
        return logits

    monkeypatch.setattr(model, "step", poisoned)
    outs = run(eng)
    (last_bad,) = [o for o in outs[rb] if o.finished]
    assert last_bad.finish_reason == "error" and "non-finite" in last_bad.error and not tokens(outs[rb])
    monkeypatch.undo()
    assert tokens(outs[rg]) == alone(model, good, greedy(4))  # the other request of the batch is untouched
    assert all(o.logprobs is None or all(map(math.isfinite, o.logprobs)) for o in outs[rg])
    assert eng.stats().used_kv_blocks == 0 and eng.stats().free_slots == eng.max_num_seqs


def test_kv_pool_sizing(model: MiniMaxForCausalLM) -> None:
    cfg = model.config
    per_token = cfg.kv_bytes_per_token(4)  # fp32 model: 4 bytes per element
    eng = LLMEngine(model, kv_block_size=8, kv_cache_bytes=per_token * 8 * 10 + 1)
    assert eng.store.num_kv_blocks == 10 and eng.max_model_len == 80  # one request may use the whole pool
    eng = LLMEngine(model, max_num_seqs=3, max_model_len=100, kv_block_size=8)
    assert eng.store.num_kv_blocks == 3 * 13  # every slot can hold max_model_len tokens
