"""Grammar libraries compared: time to compute one decode step's token mask at the real vocabulary size.

MiniMax-Text-01 / M1 have 200 064 token ids. The mask a grammar library computes per decode step is a CPU cost
paid on the engine thread for every constrained row, so it is what decides between the two maintained
libraries, xgrammar and llguidance. Both get the same synthetic byte-level vocabulary of 200 064 tokens (the
256 bytes, then the most frequent pre-tokenizer pieces of the Python standard library's source and their
prefixes, CJK characters and pairs, then padding ids no text maps to), the same JSON schemas with compact
separators and no free whitespace (the server's setting), and the same token sequence: a valid instance of the
schema encoded greedily (longest match). Per step: fill the mask of the next token, then accept the token.

A second table times this engine's own path with the chosen library (llguidance): building the grammar
vocabulary from a MiniMaxTokenizer of 200 064 tokens (once per engine), and per step the matcher's mask plus
`structured.apply_token_bitmask` on a float32 [1, 200 064] logits row.

    pip install -e ".[bench]"           # xgrammar, for the comparison
    python bench/grammar_mask.py        # -> bench/results/grammar-mask-<date>.json and .md
"""

from __future__ import annotations

import collections
import json
import platform
import re
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

VOCAB_SIZE = 200_064
EOS_ID = 200_020  # `<end_of_sentence>` of the released tokenizer
_PIECE = re.compile(r" ?\w+| ?[^\s\w]+|\s+")

SCHEMAS: dict[str, tuple[dict[str, Any], Any]] = {
    "flat object": ({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                     "required": ["city", "days"], "additionalProperties": False},
                    {"city": "San Francisco", "days": 3}),
    "nested + enum + array": ({
        "type": "object", "additionalProperties": False, "required": ["name", "unit", "tags", "owner"],
        "properties": {
            "name": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "owner": {"type": "object", "additionalProperties": False, "required": ["id", "active"],
                      "properties": {"id": {"type": "integer"}, "active": {"type": "boolean"}}}}},
        {"name": "weather report for the coming week", "unit": "celsius",
         "tags": ["rain", "wind", "forecast", "europe"], "owner": {"id": 123456, "active": True}}),
    "any JSON object": ({"type": "object"},
                        {"query": "lightning attention", "limit": 10, "filters": {"lang": ["en", "zh"]}}),
}


def synthetic_vocab() -> list[bytes]:
    """VOCAB_SIZE byte strings: bytes, frequent source pieces and prefixes, CJK, then unreachable padding."""
    counts: collections.Counter[bytes] = collections.Counter()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        for piece in _PIECE.findall(path.read_text(encoding="utf-8", errors="ignore")):
            b = piece.encode()
            for n in range(2, min(len(b), 16) + 1):
                counts[b[:n]] += 1
    vocab = [bytes([i]) for i in range(256)]
    seen = set(vocab)
    cjk = [chr(c).encode() for c in range(0x4E00, 0x4E00 + 8000)]
    pairs = [a + b for a in cjk[:120] for b in cjk[:120]]
    for b in cjk + [b for b, _ in counts.most_common()] + pairs:
        if len(vocab) >= EOS_ID:
            break
        if b not in seen:
            seen.add(b)
            vocab.append(b)
    while len(vocab) < VOCAB_SIZE:  # special / unused ids: text never maps to them
        vocab.append(f"<|reserved_{len(vocab)}|>".encode())
    return vocab


def greedy_encode(text: bytes, index: dict[bytes, int], max_len: int = 16) -> list[int]:
    ids, pos = [], 0
    while pos < len(text):
        for n in range(min(max_len, len(text) - pos), 0, -1):
            if (t := index.get(text[pos:pos + n])) is not None:
                ids.append(t)
                pos += n
                break
    return ids


def time_xgrammar(vocab: list[bytes], schema: dict[str, Any], ids: list[int]) -> dict[str, float]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=VOCAB_SIZE, stop_token_ids=[EOS_ID])
    compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
    compile_ms = (time.perf_counter() - t0) * 1e3
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, VOCAB_SIZE)
    steps = []
    for t in ids + [EOS_ID]:
        t0 = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask, 0)
        steps.append((time.perf_counter() - t0) * 1e3)
        assert matcher.accept_token(t), "the instance must be accepted"
    assert matcher.is_terminated()
    return {"compile_ms": compile_ms, **_stats(steps)}


def time_llguidance(vocab: list[bytes], schema: dict[str, Any], ids: list[int]) -> dict[str, float]:
    import llguidance
    import llguidance.torch as llg_torch

    class Wrapper:  # what llguidance.TokenizerWrapper reads of a tokenizer
        eos_token_id, bos_token_id, tokens, special_token_ids = EOS_ID, None, vocab, []

        def __call__(self, text: bytes) -> list[int]:
            return greedy_encode(text, index)

    index = {b: i for i, b in enumerate(vocab[:EOS_ID])}
    tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrapper()), n_vocab=VOCAB_SIZE)
    t0 = time.perf_counter()
    strict = {**schema, "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(strict))
    matcher = llguidance.LLMatcher(tokenizer, grammar)
    compile_ms = (time.perf_counter() - t0) * 1e3
    assert not matcher.is_error(), matcher.get_error()
    bitmask = llg_torch.allocate_token_bitmask(1, VOCAB_SIZE)
    steps = []
    for t in ids + [EOS_ID]:
        t0 = time.perf_counter()
        llg_torch.fill_next_token_bitmask(matcher, bitmask, 0)
        steps.append((time.perf_counter() - t0) * 1e3)
        assert matcher.consume_token(t), matcher.get_error()
    assert matcher.is_stopped() or matcher.is_accepting()
    return {"compile_ms": compile_ms, **_stats(steps)}


def time_engine_path(vocab: list[bytes], schema: dict[str, Any], ids: list[int]) -> dict[str, float]:
    """GrammarVocabulary from a MiniMaxTokenizer over `vocab`, then per step: fill + apply to a logits row."""
    from tokenizers import Tokenizer, models

    from minimax01.structured import GrammarMatcher, GrammarVocabulary, apply_token_bitmask, json_schema_grammar
    from minimax01.tokenizer import MiniMaxTokenizer, _byte_decoder

    to_char = {b: c for c, b in _byte_decoder().items()}  # byte -> its byte-level alphabet character
    pieces = {"".join(to_char[x] for x in b): i for i, b in enumerate(vocab)}
    tokenizer = MiniMaxTokenizer(Tokenizer(models.WordLevel(pieces, unk_token=next(iter(pieces)))))
    t0 = time.perf_counter()
    vocabulary = GrammarVocabulary(tokenizer, VOCAB_SIZE, [EOS_ID])
    setup_ms = (time.perf_counter() - t0) * 1e3
    matcher = GrammarMatcher(vocabulary, json_schema_grammar(schema))
    bitmask = vocabulary.new_bitmask(1)
    logits = torch.randn(1, VOCAB_SIZE)
    steps = []
    for t in ids + [EOS_ID]:
        t0 = time.perf_counter()
        matcher.fill_bitmask(bitmask, 0)
        apply_token_bitmask(logits, [0], bitmask)
        steps.append((time.perf_counter() - t0) * 1e3)
        assert matcher.accept(t), matcher.error
    assert matcher.finished
    return {"vocabulary_setup_ms": setup_ms, **_stats(steps)}


def _stats(steps_ms: list[float]) -> dict[str, float]:
    # The first mask of a grammar is often the widest (any key / any value); report it apart from the rest.
    ordered = sorted(steps_ms)
    return {"steps": len(steps_ms), "first_step_ms": steps_ms[0], "median_step_ms": statistics.median(steps_ms),
            "p90_step_ms": ordered[int(0.9 * (len(ordered) - 1))], "max_step_ms": ordered[-1],
            "mean_step_ms": statistics.fmean(steps_ms)}


def main() -> None:
    from importlib.metadata import version

    torch.set_num_threads(1)
    vocab = synthetic_vocab()
    index = {b: i for i, b in enumerate(vocab[:EOS_ID])}
    rows = []
    for name, (schema, instance) in SCHEMAS.items():
        text = json.dumps(instance, separators=(", ", ": ")).encode()
        ids = greedy_encode(text, index)
        for lib, fn in (("xgrammar", time_xgrammar), ("llguidance", time_llguidance)):
            fn(vocab, schema, ids)  # warm-up: first-use initialisation of the library
            runs = [fn(vocab, schema, ids) for _ in range(3)]
            best = min(runs, key=lambda r: r["median_step_ms"])
            rows.append({"schema": name, "library": lib, **{k: round(v, 4) for k, v in best.items()}})
            print(rows[-1], flush=True)
    engine_rows = []
    for name, (schema, instance) in SCHEMAS.items():
        ids = greedy_encode(json.dumps(instance, separators=(", ", ": ")).encode(), index)
        best = min((time_engine_path(vocab, schema, ids) for _ in range(3)), key=lambda r: r["median_step_ms"])
        engine_rows.append({"schema": name, **{k: round(v, 4) for k, v in best.items()}})
        print(engine_rows[-1], flush=True)
    meta = {"vocab_size": VOCAB_SIZE, "machine": f"{platform.processor() or platform.machine()}, 2-core CPU, "
            "shared with other work", "python": platform.python_version(), "torch": torch.__version__,
            "xgrammar": version("xgrammar"), "llguidance": version("llguidance"), "method": "per step: fill the next-token mask of one "
            "matcher, then accept the token; best of 3 runs by median, after a warm-up run"}
    sections = {"mask time per decode step": rows,
                "this engine's path (llguidance): mask + apply to a logits row": engine_rows}
    for path in write_results("grammar-mask", sections, meta):
        print(path)


if __name__ == "__main__":
    main()
