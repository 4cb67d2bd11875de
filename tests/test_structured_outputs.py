"""Structured outputs below the server: the bitmask, the sampler's masking of constrained rows only, and the engine
running grammars on the tiny random model, whose every constrained output must parse and validate.

With random weights a free JSON string or number ends only when the model happens to write its terminator, so
the schemas bound what the grammar lets run long (maxLength, integer ranges, maxItems); the grammar's strict
layout (no free whitespace, structured/grammars.py) does the rest. max_new_tokens leaves room for the longest
output those bounds allow.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch

from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.chat.function_call import FunctionCallParser
from minimax01.chat.m1_tool_calls import ToolCallsParser
from minimax01.engine import LLMEngine, RequestOutput
from minimax01.errors import RequestError
from minimax01.sampling import Sampler, make_generator
from minimax01.sampling_params import SamplingParams
from minimax01.server.structured_outputs import tool_choice_grammar
from minimax01.structured import (
    GrammarMatcher,
    GrammarVocabulary,
    apply_token_bitmask,
    json_schema_grammar,
    unpack_bitmask,
)
from minimax01.tokenizer import MiniMaxTokenizer

CITY = {"type": "string", "maxLength": 6}
SCHEMAS: dict[str, dict[str, Any]] = {
    "flat, required": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                       "properties": {"city": CITY, "days": {"type": "integer", "minimum": 0, "maximum": 30}}},
    "enum + boolean array": {"type": "object", "additionalProperties": False, "required": ["unit", "flags"],
                             "properties": {"unit": {"enum": ["celsius", "fahrenheit"]},
                                            "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}}},
    "nested, optional field": {
        "type": "object", "additionalProperties": False, "required": ["owner"],
        "properties": {"note": {"type": "string", "maxLength": 4},
                       "owner": {"type": "object", "additionalProperties": False, "required": ["id", "tags"],
                                 "properties": {"id": {"type": "integer", "minimum": -5, "maximum": 5},
                                                "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                                         "minItems": 1, "maxItems": 2}}}}},
}
MAX_NEW = 120  # the longest output the schemas allow is well under 100 tokens of the tiny vocabulary


def bitmask_of(allowed: list[list[int]], vocab: int) -> torch.Tensor:
    """int32 [rows, ceil(vocab / 32)] with exactly `allowed[r]` set in row r (written bit by bit, independently of
    the library's packing)."""
    words = torch.zeros(len(allowed), -(-vocab // 32), dtype=torch.int64)
    for r, ids in enumerate(allowed):
        for t in ids:
            words[r, t // 32] |= 1 << (t % 32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # two's complement for bit 31


def test_unpack_bitmask_reads_every_bit() -> None:
    vocab = 100
    allowed = [[0, 31, 32, 63, 99], [5]]
    bits = unpack_bitmask(bitmask_of(allowed, vocab), vocab)
    assert bits.shape == (2, vocab)
    assert [torch.nonzero(row).flatten().tolist() for row in bits] == allowed


def test_sampler_masks_only_constrained_rows() -> None:
    vocab, allowed = 64, [5, 40]
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    bitmask = bitmask_of([allowed], vocab)
    masked = apply_token_bitmask(logits, [1], bitmask)
    assert torch.equal(masked[0], logits[0]) and torch.equal(masked[2], logits[2])
    assert torch.isinf(masked[1]).sum() == vocab - len(allowed) and torch.equal(masked[1, allowed], logits[1, allowed])
    sampler = Sampler()
    params = [SamplingParams(temperature=1.0, seed=s, logprobs=5) for s in range(3)]
    for draw in range(50):  # masked tokens are never drawn, whatever the seed
        gens = [make_generator(100 * draw + i, "cpu") for i in range(3)]
        plain = sampler.sample(logits, params, gens, [[]] * 3, [0] * 3)
        gens = [make_generator(100 * draw + i, "cpu") for i in range(3)]
        out = sampler.sample(logits, params, gens, [[]] * 3, [0] * 3, [1], bitmask)
        assert out.tokens[1].item() in allowed
        # The unconstrained rows draw the same tokens with the same logprobs as without the masked neighbour.
        assert out.tokens[[0, 2]].tolist() == plain.tokens[[0, 2]].tolist()
        assert torch.equal(out.logprobs[[0, 2]], plain.logprobs[[0, 2]])
        # The constrained row's top logprobs list only allowed tokens (masked ones are -inf, not candidates).
        assert {t for t, _ in out.top_logprobs[1]} == set(allowed)
    greedy = sampler.sample(logits, [SamplingParams(temperature=0.0)] * 3, [None] * 3, [[]] * 3, [0] * 3, [1], bitmask)
    assert greedy.tokens[1].item() == allowed[int(logits[1, allowed].argmax())]


def run(eng: LLMEngine) -> dict[str, list[RequestOutput]]:
    outs: dict[str, list[RequestOutput]] = {}
    while eng.has_unfinished():
        for o in eng.step():
            outs.setdefault(o.request_id, []).append(o)
    return outs


def text_of(outs: list[RequestOutput]) -> str:
    return "".join(o.new_text for o in outs)


@pytest.fixture(scope="module")
def engine(model: MiniMaxForCausalLM, tokenizer: MiniMaxTokenizer) -> LLMEngine:
    return LLMEngine(model, tokenizer, max_num_seqs=8, max_model_len=512, kv_block_size=16)


def test_engine_outputs_validate_against_their_schemas(engine: LLMEngine, tokenizer: MiniMaxTokenizer) -> None:
    prompt = tokenizer.encode("The weather report, as JSON:")
    expected: dict[str, dict[str, Any]] = {}
    for name, schema in SCHEMAS.items():
        grammar = json_schema_grammar(schema)
        # Greedy, and n=2 sampled choices (each its own request and matcher, as the server submits them).
        for i, params in enumerate([SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW, grammar=grammar)] + [
                SamplingParams(temperature=1.0, seed=s, max_new_tokens=MAX_NEW, grammar=grammar) for s in (7, 8)]):
            expected[engine.add_request(prompt, params, request_id=f"{name}-{i}")] = schema
    outs = run(engine)
    for rid, schema in expected.items():
        final = outs[rid][-1]
        assert final.finish_reason == "stop", (rid, text_of(outs[rid]))
        jsonschema.validate(json.loads(text_of(outs[rid])), schema)
    assert engine.stats().free_slots == engine.max_num_seqs


def test_unconstrained_neighbour_is_unchanged(engine: LLMEngine, tokenizer: MiniMaxTokenizer) -> None:
    plain_prompt, prompt = tokenizer.encode("Once upon a time"), tokenizer.encode("JSON:")
    alone = engine.add_request(plain_prompt, SamplingParams(temperature=0.0, max_new_tokens=40), "alone")
    alone_tokens = [t for o in run(engine)[alone] for t in o.new_token_ids]
    grammar = json_schema_grammar(SCHEMAS["flat, required"])
    engine.add_request(prompt, SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW, grammar=grammar), "json")
    engine.add_request(plain_prompt, SamplingParams(temperature=0.0, max_new_tokens=40), "mixed")
    outs = run(engine)
    assert [t for o in outs["mixed"] for t in o.new_token_ids] == alone_tokens
    jsonschema.validate(json.loads(text_of(outs["json"])), SCHEMAS["flat, required"])


def test_preempted_constrained_requests_still_validate(model: MiniMaxForCausalLM, tokenizer: MiniMaxTokenizer) -> None:
    # 6 KV blocks of 16 tokens for 4 requests of up to ~80 tokens: some are preempted and recomputed; their
    # matchers keep their place, since the tokens they accepted are replayed, not sampled again.
    eng = LLMEngine(model, tokenizer, max_num_seqs=4, max_model_len=128, kv_block_size=16, num_kv_blocks=12)
    schema = SCHEMAS["nested, optional field"]
    grammar = json_schema_grammar(schema)
    prompt = tokenizer.encode("a prompt of some length, for the owner record:")
    ids = [eng.add_request(prompt, SamplingParams(temperature=1.0, seed=s, max_new_tokens=80, grammar=grammar))
           for s in range(4)]
    outs = run(eng)
    assert eng.scheduler.num_preemptions > 0
    for rid in ids:
        assert outs[rid][-1].finish_reason == "stop"
        jsonschema.validate(json.loads(text_of(outs[rid])), schema)


@pytest.mark.parametrize("parser", [FunctionCallParser(), ToolCallsParser()], ids=["text-01", "m1"])
@pytest.mark.parametrize("name", [None, "get_weather"], ids=["required", "named"])
def test_tool_call_grammar_gives_a_parsed_valid_call(engine: LLMEngine, tokenizer: MiniMaxTokenizer, parser: Any,
                                                     name: str | None) -> None:
    tools = [{"name": "get_weather", "parameters": SCHEMAS["flat, required"]},
             {"name": "get_time", "parameters": SCHEMAS["enum + boolean array"]},
             {"name": "now"}]  # no parameters: its only arguments are {}
    prefix = parser.forced_prefix(name)
    grammar = tool_choice_grammar(tools, name, parser)
    prompt = tokenizer.encode("Call a tool. " + prefix)
    ids = [engine.add_request(prompt, SamplingParams(temperature=1.0, seed=s, max_new_tokens=MAX_NEW,
                                                     grammar=grammar)) for s in range(3)]
    outs = run(engine)
    schemas = {t["name"]: t.get("parameters", {"type": "object", "maxProperties": 0}) for t in tools}
    for rid in ids:
        assert outs[rid][-1].finish_reason == "stop"
        content, calls = parser.parse(prefix + text_of(outs[rid]))
        assert content == "" and len(calls) == 1
        assert name is None or calls[0].name == name
        jsonschema.validate(json.loads(calls[0].arguments), schemas[calls[0].name])


@pytest.mark.parametrize("schema", [{"enum": ["yes", "no"]}, {"type": "integer", "minimum": 0, "maximum": 10**6}],
                         ids=["ends by itself", "may end"])
def test_ignored_eos_still_ends_a_complete_grammar(engine: LLMEngine, tokenizer: MiniMaxTokenizer,
                                                   schema: dict[str, Any]) -> None:
    # An enum ends with its closing quote; an integer may go on (more digits) or end with an EOS, which then ends
    # the request although ignore_eos is set, and is not shown as text.
    prompt = tokenizer.encode("Answer:")
    for seed in range(3):
        rid = engine.add_request(prompt, SamplingParams(temperature=1.0, seed=seed, max_new_tokens=50,
                                                        grammar=json_schema_grammar(schema), ignore_eos=True))
        outs = run(engine)[rid]
        assert outs[-1].finish_reason == "stop" and outs[-1].completion_tokens < 50
        jsonschema.validate(json.loads(text_of(outs)), schema)


def test_invalid_grammar_is_a_request_error(engine: LLMEngine, tokenizer: MiniMaxTokenizer) -> None:
    with pytest.raises(RequestError, match="grammar"):
        engine.add_request([1, 2], SamplingParams(grammar=123))  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="invalid schema"):
        engine.add_request([1, 2], SamplingParams(grammar="start: %json {\"type\": \"nope\"}"))


class ClosingBias:
    """A StepModel that adds `bias` to the logits of tokens containing `"`, `}` or `]`: the random model then ends
    strings and containers within a few tokens, so that the any-object grammar finishes. The bias makes nothing
    valid by itself; only the grammar's mask does (without it, the output is not JSON at all)."""

    def __init__(self, model: MiniMaxForCausalLM, tokenizer: MiniMaxTokenizer, bias: float) -> None:
        self._model = model
        ids = [i for i in range(tokenizer.vocab_size) if any(c in tokenizer.token_bytes(i) for c in b'"}]')]
        self._bias = torch.zeros(model.config.vocab_size)
        self._bias[ids] = bias

    def __getattr__(self, name: str) -> Any:  # config, device, dtype, state_layout, new_store
        return getattr(self._model, name)

    def step(self, *args: Any, **kw: Any) -> torch.Tensor:
        return self._model.step(*args, **kw) + self._bias


def test_json_object_mode(model: MiniMaxForCausalLM, tokenizer: MiniMaxTokenizer) -> None:
    from minimax01.structured import json_object_grammar

    eng = LLMEngine(ClosingBias(model, tokenizer, 4.0), tokenizer, max_num_seqs=4, max_model_len=512,
                    kv_block_size=16)
    prompt = tokenizer.encode("Any JSON object:")
    free = eng.add_request(prompt, SamplingParams(temperature=1.0, seed=0, max_new_tokens=20))
    ids = [eng.add_request(prompt, SamplingParams(temperature=1.0, seed=s, max_new_tokens=300,
                                                  grammar=json_object_grammar())) for s in range(4)]
    outs = run(eng)
    with pytest.raises(ValueError):
        json.loads(text_of(outs[free]))
    for rid in ids:
        assert outs[rid][-1].finish_reason == "stop"
        assert isinstance(json.loads(text_of(outs[rid])), dict)


THINK = ("<think>", "</think>")


def test_reasoning_block_may_precede_the_answer(tokenizer: MiniMaxTokenizer) -> None:
    grammar = json_schema_grammar(SCHEMAS["flat, required"], THINK)
    vocabulary = GrammarVocabulary(tokenizer, tokenizer.vocab_size, [tokenizer.eos_token_id])
    answer = '{"city": "Paris", "days": 3}'
    for text, valid in ((f"<think>\nMaybe {{\"a\"}}, then.\n</think>\n\n{answer}", True), (answer, True),
                        ("<think>x</think>\nnot JSON", False), (f"<think>x</think>\n\n\n{answer}", False)):
        matcher = GrammarMatcher(vocabulary, grammar)
        accepted = all(matcher.accept(t) for t in tokenizer.encode(text))
        assert accepted == valid, text
        if valid:  # EOS only once the answer is complete
            assert matcher.accept(tokenizer.eos_token_id) and matcher.finished
    inside = GrammarMatcher(vocabulary, grammar)
    assert all(inside.accept(t) for t in tokenizer.encode("<think>still thinking"))
    bitmask = vocabulary.new_bitmask(1)
    inside.fill_bitmask(bitmask, 0)
    assert not unpack_bitmask(bitmask, vocabulary.vocab_size)[0, tokenizer.eos_token_id]


def test_m1_reasons_then_answers_valid_json(tmp_path: Any) -> None:
    from forced_output import write_forced_checkpoint

    from minimax01.chat.reasoning import ThinkParser
    from minimax01.tokenizer import load_tokenizer

    gen_prompt = "<beginning_of_sentence>ai name=MiniMax AI\n"
    answer = {"city": "Paris", "days": 3}
    target = f"<think>\nThe user wants the weather as JSON; {{not JSON here}}.\n</think>\n\n{json.dumps(answer)}"
    ckpt = write_forced_checkpoint(tmp_path / "ckpt", target, gen_prompt)
    tok = load_tokenizer(ckpt)
    eng = LLMEngine(MiniMaxForCausalLM.from_pretrained(ckpt, dtype=torch.float32), tok, max_num_seqs=2,
                    max_model_len=256, kv_block_size=16)
    grammar = json_schema_grammar(SCHEMAS["flat, required"], ThinkParser.markers)
    rid = eng.add_request(tok.encode("Weather?" + gen_prompt), SamplingParams(temperature=0.0, max_new_tokens=100,
                                                                               grammar=grammar))
    outs = run(eng)[rid]
    reasoning, content = ThinkParser().parse(text_of(outs))
    assert outs[-1].finish_reason == "stop" and "{not JSON here}" in reasoning
    assert json.loads(content) == answer


def test_logprobs_prompt_logprobs_and_abort_with_a_grammar(engine: LLMEngine, tokenizer: MiniMaxTokenizer) -> None:
    prompt = tokenizer.encode("Scores, then JSON:")
    grammar = json_schema_grammar(SCHEMAS["enum + boolean array"])
    scored = engine.add_request(prompt, SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW, grammar=grammar,
                                                       logprobs=3, prompt_logprobs=2))
    aborted = engine.add_request(prompt, SamplingParams(temperature=1.0, seed=1, max_new_tokens=MAX_NEW,
                                                        grammar=grammar))
    outs: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
        if len(outs.get(aborted, [])) == 3:
            engine.abort(aborted)
    assert outs[aborted][-1].finish_reason == "abort"
    assert engine.stats().free_slots == engine.max_num_seqs
    final = outs[scored]
    jsonschema.validate(json.loads(text_of(final)), SCHEMAS["enum + boolean array"])
    assert len(next(o.prompt_logprobs for o in final if o.prompt_logprobs is not None)) == len(prompt) - 1
    for o in final:  # the sampled token's logprob is finite, its top list holds only allowed (finite) tokens
        for lp, top in zip(o.logprobs or [], o.top_logprobs or []):
            assert lp > float("-inf") and all(v > float("-inf") for _, v in top) and 1 <= len(top) <= 3
