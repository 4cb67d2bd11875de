"""SamplingParams: what one request asks of decoding (sampling knobs, lengths, stops, logprobs, grammar, text
options), and their validation, in one place for the engine, the server and the CLI."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real

from minimax01.errors import RequestError, brief

__all__ = ["MAX_TOP_LOGPROBS", "SamplingParams"]

#: Upper bound on ``SamplingParams.logprobs`` (OpenAI's ``top_logprobs`` limit).
MAX_TOP_LOGPROBS = 20

# torch.Generator.manual_seed accepts exactly this range; checking it in validate()
# turns a RuntimeError deep in the engine into a RequestError naming the field.
_SEED_MIN = -(2**63)
_SEED_MAX = 2**64 - 1


def _is_int(x: object) -> bool:
    # bool is an int subclass; "top_k": true in JSON is a client bug, not top_k=1.
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    """Per-request sampling parameters.

    Attributes:
        temperature: softmax temperature; ``0`` means greedy (argmax).
        top_k: keep the ``top_k`` most likely tokens; ``0`` or ``-1`` disables it.
        top_p: nucleus sampling; keep the smallest set of tokens whose cumulative
            probability is ``>= top_p``.  ``1.0`` disables it.
        min_p: drop tokens whose probability is below ``min_p * max_prob``.
        repetition_penalty: HF/CTRL penalty over tokens seen in prompt + output
            (``> 1`` discourages repetition, ``1.0`` disables it).
        presence_penalty: OpenAI presence penalty over generated tokens.
        frequency_penalty: OpenAI frequency penalty over generated tokens.
        seed: per-request RNG seed; ``None`` uses the engine's shared generator.
        max_new_tokens: maximum number of generated tokens.
        stop_token_ids: extra token ids that end generation (besides EOS).
        stop: stop strings; the output is cut just before the first one found.
        logprobs: number of top log-probabilities to return per token (0..20), or
            ``None`` for none.
        ignore_eos: keep generating after EOS (benchmarks).
        prompt_logprobs: score every prompt token and return this many top log-probabilities per prompt
            position (0..20), or ``None`` for none; with it ``max_new_tokens`` may be 0 (only score the prompt).
        grammar: an llguidance grammar definition the output must match (``minimax01.structured`` builds them:
            JSON, a JSON schema, a tool call), or ``None``. The request ends when the grammar does.
        skip_special_tokens: leave special tokens out of the text (the token ids still have them).
        spaces_between_special_tokens: one space between a kept special token and its neighbours in the text.
            Both default to off here (the raw text); the HTTP API turns both on by default, as vLLM does.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_new_tokens: int = 256
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    ignore_eos: bool = False
    prompt_logprobs: int | None = None
    grammar: str | None = None
    skip_special_tokens: bool = False
    spaces_between_special_tokens: bool = False

    @property
    def is_greedy(self) -> bool:
        """True when sampling reduces to argmax (no randomness is drawn)."""
        return self.temperature == 0 or self.top_k == 1

    def validate(self) -> None:
        """Check every field; raise :class:`RequestError` naming the first bad one.

        Ranges follow the OpenAI API where it defines them (temperature, top_p,
        penalties, top_logprobs); the rest follow vLLM.
        """

        def real_in(name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> None:
            # `not (a <= x <= b)` is also True for NaN, so NaN is rejected for free.
            ok = _is_real(value) and (
                (lo < value <= hi) if lo_open else (lo <= value <= hi)  # type: ignore[operator]
            )
            if not ok:
                bracket = "(" if lo_open else "["
                raise RequestError(f"{name} must be in {bracket}{lo:g}, {hi:g}], got {brief(value)}")

        real_in("temperature", self.temperature, 0.0, 2.0)
        real_in("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        real_in("min_p", self.min_p, 0.0, 1.0)
        real_in("presence_penalty", self.presence_penalty, -2.0, 2.0)
        real_in("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        rp = self.repetition_penalty
        if not (_is_real(rp) and math.isfinite(rp) and rp > 0):
            raise RequestError(f"repetition_penalty must be a finite number > 0, got {brief(rp)}")
        if not (_is_int(self.top_k) and self.top_k >= -1):
            raise RequestError(
                f"top_k must be an integer >= -1 (0 or -1 disables it), got {brief(self.top_k)}"
            )
        # 0 new tokens is a request to score the prompt (lm-eval's loglikelihood), pointless without scores.
        min_new = 0 if self.prompt_logprobs is not None else 1
        if not (_is_int(self.max_new_tokens) and self.max_new_tokens >= min_new):
            raise RequestError(
                f"max_new_tokens must be an integer >= 1 (0 only with prompt_logprobs), got "
                f"{brief(self.max_new_tokens)}"
            )
        if self.seed is not None and not (_is_int(self.seed) and _SEED_MIN <= self.seed <= _SEED_MAX):
            raise RequestError(
                f"seed must be null or an integer in [{_SEED_MIN}, {_SEED_MAX}], got {brief(self.seed)}"
            )
        if self.logprobs is not None and not (
            _is_int(self.logprobs) and 0 <= self.logprobs <= MAX_TOP_LOGPROBS
        ):
            raise RequestError(
                f"logprobs must be null or an integer in [0, {MAX_TOP_LOGPROBS}], got {brief(self.logprobs)}"
            )
        if self.prompt_logprobs is not None and not (
            _is_int(self.prompt_logprobs) and 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS
        ):
            raise RequestError(
                f"prompt_logprobs must be null or an integer in [0, {MAX_TOP_LOGPROBS}], got "
                f"{brief(self.prompt_logprobs)}"
            )
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
            _is_int(t) and t >= 0 for t in self.stop_token_ids
        ):
            raise RequestError(
                f"stop_token_ids must be a list of non-negative integers, got {brief(self.stop_token_ids)}"
            )
        # An empty stop string would match at position 0 and end every request at once.
        if not isinstance(self.stop, (list, tuple)):
            raise RequestError(f"stop must be a list of non-empty strings, got {brief(self.stop)}")
        for i, stop in enumerate(self.stop):
            if not (isinstance(stop, str) and stop):
                raise RequestError(f"stop[{i}] must be a non-empty string, got {brief(stop)}")
        for name in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise RequestError(f"{name} must be a boolean, got {brief(getattr(self, name))}")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise RequestError(f"grammar must be null or a grammar definition string, got {brief(self.grammar)}")
