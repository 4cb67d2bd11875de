"""Per-request grammar state: the vocabulary as llguidance sees it (built once per engine) and one matcher per
constrained request, which fills that request's row of the step's token bitmask and advances with each token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import llguidance
import llguidance.torch
import torch

from minimax01.errors import RequestError

if TYPE_CHECKING:
    from minimax01.tokenizer import MiniMaxTokenizer


class _TokenizerView:
    """What llguidance.TokenizerWrapper reads of a tokenizer: token bytes, special ids, EOS, an encoder."""

    def __init__(self, tokenizer: MiniMaxTokenizer, eos: int, vocab_size: int) -> None:
        special = set(tokenizer.special_token_ids())
        # Special tokens get no text here: llguidance gives them a reserved byte form, so a grammar's text (a JSON
        # string, say) can never be written with `<function_call>` or `<end_of_sentence>`. Ids the model cannot
        # produce (a tokenizer larger than the model's vocabulary) are left out.
        self.tokens = [b"" if i in special else tokenizer.token_bytes(i)
                       for i in range(min(tokenizer.vocab_size, vocab_size))]
        self.special_token_ids = sorted(special)
        self.eos_token_id = eos
        self.bos_token_id = None
        self._tokenizer = tokenizer

    def __call__(self, text: bytes) -> list[int]:
        return self._tokenizer.encode(text.decode("utf-8", errors="replace"))


class GrammarVocabulary:
    """The model's vocabulary for llguidance: `vocab_size` ids (the model's, which may exceed the tokenizer's:
    the extra ids are never allowed) and the ids that may end a complete output (`stop_ids`, EOS first)."""

    def __init__(self, tokenizer: MiniMaxTokenizer, vocab_size: int, stop_ids: list[int]) -> None:
        view = _TokenizerView(tokenizer, stop_ids[0], vocab_size)
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(view), n_vocab=vocab_size,
                                                eos_token=list(stop_ids))

    def new_bitmask(self, rows: int) -> torch.Tensor:
        """int32 [rows, ceil(vocab_size / 32)] on the CPU, where llguidance writes masks."""
        return llguidance.torch.allocate_token_bitmask(rows, self.vocab_size)


class GrammarMatcher:
    """One request's position in its grammar. `fill_bitmask` before sampling, `accept` after; `finished` once the
    grammar has ended (an EOS was accepted, or nothing may follow)."""

    def __init__(self, vocabulary: GrammarVocabulary, grammar: str) -> None:
        self._matcher = llguidance.LLMatcher(vocabulary.tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise RequestError(f"invalid schema: {self._matcher.get_error()}")

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> bool:
        """Writes the allowed next tokens into row `row` of `bitmask` (from GrammarVocabulary.new_bitmask); False
        if the matcher failed instead (a parser limit; `error` says which), leaving no token allowed."""
        llguidance.torch.fill_next_token_bitmask(self._matcher, bitmask, row)
        return not self._matcher.is_error()

    def accept(self, token: int) -> bool:
        """Advances over `token`; False if the grammar does not allow it (then `error` says why)."""
        return self._matcher.consume_token(token) and not self._matcher.is_error()

    @property
    def finished(self) -> bool:
        return self._matcher.is_stopped()

    @property
    def error(self) -> str:
        return self._matcher.get_error()


def fill_bitmasks(vocabulary: GrammarVocabulary | None, matchers: list[GrammarMatcher | None]
                  ) -> tuple[list[int], torch.Tensor | None, list[int]]:
    """One step's masks for a batch whose row i has grammar `matchers[i]` (None: unconstrained). Returns (the
    constrained rows, their bitmask int32 [len(rows), W] on the CPU, the rows whose matcher failed)."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows or vocabulary is None:
        return [], None, []
    bitmask = vocabulary.new_bitmask(len(rows))
    failed = [i for j, i in enumerate(rows) if not matchers[i].fill_bitmask(bitmask, j)]  # type: ignore[union-attr]
    return rows, bitmask, failed
