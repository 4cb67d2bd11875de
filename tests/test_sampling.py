"""Tests for minimax01.sampling: sampler correctness, per-request seeding, stop strings."""

from __future__ import annotations

import math

import pytest
import torch

from minimax01.errors import RequestError
from minimax01.sampling import Sampler, make_generator
from minimax01.sampling_params import SamplingParams
from minimax01.stop_strings import StopChecker

# Number of draws for the distribution tests.  With N = 40_000 the standard error of
# a frequency is <= 0.0025; 5 sigma per cell keeps the false-failure probability
# below ~6e-7 per cell (Bonferroni over a handful of cells: < 1e-5 per test), and the
# default generator is seeded, so the outcome is deterministic anyway.
N_DRAWS = 40_000
Z = 5.0


def _run(
    logits_row: torch.Tensor,
    p: SamplingParams,
    n: int = N_DRAWS,
    seed: int = 1234,
) -> torch.Tensor:
    """Sample ``n`` i.i.d. tokens from one distribution by tiling it over a batch."""
    V = logits_row.numel()
    g = torch.Generator().manual_seed(seed)
    s = Sampler(default_generator=g)
    logits = logits_row.float().expand(n, V).contiguous()
    out = s.sample(logits, [p] * n, [None] * n, [[] for _ in range(n)], [0] * n)
    return out.tokens


def _check_freqs(tokens: torch.Tensor, expected: list[float]) -> None:
    """Empirical frequencies within Z standard errors of ``expected``; zeros never seen."""
    n = tokens.numel()
    counts = torch.bincount(tokens, minlength=len(expected)).double() / n
    assert counts.numel() == len(expected)
    for tok, (f, q) in enumerate(zip(counts.tolist(), expected)):
        if q == 0.0:
            assert f == 0.0, f"token {tok} outside the allowed set was sampled ({f})"
        else:
            se = math.sqrt(q * (1 - q) / n)
            assert abs(f - q) <= Z * se, f"token {tok}: freq {f:.4f} vs expected {q:.4f}"


def _logits_from_probs(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().float()


def _renorm(probs: list[float], keep: set[int]) -> list[float]:
    z = sum(p for i, p in enumerate(probs) if i in keep)
    return [p / z if i in keep else 0.0 for i, p in enumerate(probs)]


# --------------------------------------------------------------------------- greedy


def _batch(B: int, V: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_temperature_zero_is_argmax() -> None:
    logits = _batch(16, 1000)
    out = Sampler().sample(
        logits, [SamplingParams(temperature=0.0)] * 16, [None] * 16, [[]] * 16, [0] * 16
    )
    assert torch.equal(out.tokens, logits.argmax(dim=1))
    assert out.tokens.dtype == torch.long and out.tokens.shape == (16,)


def test_top_k_one_equals_greedy() -> None:
    logits = _batch(16, 1000, seed=1)
    # Plant exact ties: top_k=1 must break them like argmax (first index).
    logits[0, 10] = logits[0, 20] = logits[0].max() + 1
    greedy = Sampler().sample(
        logits, [SamplingParams(temperature=0.0)] * 16, [None] * 16, [[]] * 16, [0] * 16
    )
    topk1 = Sampler().sample(
        logits, [SamplingParams(temperature=1.7, top_k=1)] * 16, [None] * 16, [[]] * 16, [0] * 16
    )
    assert torch.equal(topk1.tokens, greedy.tokens)
    assert topk1.tokens[0].item() == 10


def test_greedy_uses_penalised_logits() -> None:
    logits = torch.tensor([[5.0, 4.0, 0.0]])
    # Repetition penalty 2 on token 0 (seen in prompt): 5 -> 2.5 < 4.
    out = Sampler().sample(
        logits, [SamplingParams(temperature=0.0, repetition_penalty=2.0)], [None], [[0]], [1]
    )
    assert out.tokens.item() == 1


def test_greedy_rows_mixed_with_sampled_rows() -> None:
    logits = _batch(8, 500, seed=2)
    params = [SamplingParams(temperature=0.0 if i % 2 == 0 else 1.0) for i in range(8)]
    out = Sampler(torch.Generator().manual_seed(0)).sample(
        logits, params, [None] * 8, [[]] * 8, [0] * 8
    )
    argmax = logits.argmax(dim=1)
    assert torch.equal(out.tokens[::2], argmax[::2])


# --------------------------------------------------------------------------- truncation


def test_plain_sampling_matches_softmax() -> None:
    probs = [0.4, 0.3, 0.15, 0.1, 0.05]
    toks = _run(_logits_from_probs(probs), SamplingParams())
    _check_freqs(toks, probs)


def test_temperature_scales_distribution() -> None:
    probs = [0.4, 0.3, 0.15, 0.1, 0.05]
    t = 0.5
    w = [p ** (1 / t) for p in probs]
    expected = [x / sum(w) for x in w]
    toks = _run(_logits_from_probs(probs), SamplingParams(temperature=t))
    _check_freqs(toks, expected)


def test_top_p_keeps_smallest_nucleus() -> None:
    # Shuffled order so the nucleus is not just a prefix of the vocabulary.
    probs = [0.1, 0.4, 0.05, 0.3, 0.15]
    # Sorted: 0.4 (1), 0.3 (3), 0.15 (4) -> cumulative 0.4, 0.7, 0.85 >= 0.8: {1, 3, 4}.
    toks = _run(_logits_from_probs(probs), SamplingParams(top_p=0.8))
    _check_freqs(toks, _renorm(probs, {1, 3, 4}))


def test_top_p_threshold_boundaries() -> None:
    probs = [0.1, 0.4, 0.05, 0.3, 0.15]
    # 0.39 is reached by the top token alone: the nucleus is a single token.
    assert set(_run(_logits_from_probs(probs), SamplingParams(top_p=0.39), n=2000).tolist()) == {1}
    # 0.71 needs three tokens (0.4 + 0.3 = 0.7 < 0.71).
    toks = _run(_logits_from_probs(probs), SamplingParams(top_p=0.71))
    _check_freqs(toks, _renorm(probs, {1, 3, 4}))
    # 0.69 needs two.
    toks = _run(_logits_from_probs(probs), SamplingParams(top_p=0.69))
    _check_freqs(toks, _renorm(probs, {1, 3}))


def test_top_p_after_temperature() -> None:
    probs = [0.5, 0.3, 0.2]
    # At T=0.5 probs are proportional to p^2: 0.25, 0.09, 0.04 -> 0.658, 0.237, 0.105.
    # top_p=0.85: 0.658 + 0.237 = 0.895 >= 0.85 -> {0, 1}.  (Without temperature it
    # would be all three: 0.5 + 0.3 = 0.8 < 0.85.)
    t = 0.5
    w = [p**2 for p in probs]
    tp = [x / sum(w) for x in w]
    toks = _run(_logits_from_probs(probs), SamplingParams(temperature=t, top_p=0.85))
    _check_freqs(toks, _renorm(tp, {0, 1}))


def test_top_k_support_and_frequencies() -> None:
    probs = [0.05, 0.4, 0.15, 0.3, 0.1]
    toks = _run(_logits_from_probs(probs), SamplingParams(top_k=2))
    _check_freqs(toks, _renorm(probs, {1, 3}))


@pytest.mark.parametrize("k", [0, -1, 100])
def test_top_k_disabled_values(k: int) -> None:
    probs = [0.4, 0.3, 0.15, 0.1, 0.05]
    toks = _run(_logits_from_probs(probs), SamplingParams(top_k=k), n=20_000)
    _check_freqs(toks, probs)


def test_min_p_excludes_low_tokens() -> None:
    probs = [0.5, 0.3, 0.12, 0.08]
    # min_p=0.2 -> threshold 0.2 * 0.5 = 0.1: token 3 (0.08) goes, token 2 (0.12) stays.
    toks = _run(_logits_from_probs(probs), SamplingParams(min_p=0.2))
    _check_freqs(toks, _renorm(probs, {0, 1, 2}))


def test_top_k_then_top_p_renormalised() -> None:
    probs = [0.3, 0.25, 0.2, 0.15, 0.1]
    # top_k=3 -> {0,1,2} renormalised to 0.4, 0.333, 0.267; top_p=0.7 -> 0.4 + 0.333 >= 0.7
    # so {0, 1}.  (On the un-renormalised probs 0.3 + 0.25 = 0.55 < 0.7 would keep 3.)
    toks = _run(_logits_from_probs(probs), SamplingParams(top_k=3, top_p=0.7))
    _check_freqs(toks, _renorm(probs, {0, 1}))


def test_per_row_params_in_one_batch() -> None:
    probs = [0.1, 0.4, 0.05, 0.3, 0.15]
    row = _logits_from_probs(probs)
    n = 20_000
    params = [SamplingParams(top_k=1), SamplingParams(top_k=2), SamplingParams(top_p=0.8)]
    g = torch.Generator().manual_seed(7)
    logits = row.expand(3 * n, 5).contiguous()
    out = Sampler(g).sample(
        logits, params * n, [None] * (3 * n), [[] for _ in range(3 * n)], [0] * (3 * n)
    )
    toks = out.tokens.view(n, 3)
    assert set(toks[:, 0].tolist()) == {1}
    _check_freqs(toks[:, 1].contiguous(), _renorm(probs, {1, 3}))
    _check_freqs(toks[:, 2].contiguous(), _renorm(probs, {1, 3, 4}))


# --------------------------------------------------------------------------- penalties

HAND_LOGITS = [2.0, -1.0, 0.5, 3.0, -2.0, 1.0]
PROMPT = [0, 1]
GENERATED = [2, 2, 4]


def _pen(**kw: float) -> list[float]:
    logits = torch.tensor([HAND_LOGITS])
    out = Sampler.apply_penalties(
        logits, [SamplingParams(**kw)], [PROMPT + GENERATED], [len(PROMPT)]
    )
    assert torch.equal(logits, torch.tensor([HAND_LOGITS])), "input must not be modified"
    return out[0].tolist()


def test_repetition_penalty_math() -> None:
    # Seen (prompt + output) = {0, 1, 2, 4}: positive / 2, negative * 2; 3 and 5 untouched.
    assert _pen(repetition_penalty=2.0) == [1.0, -2.0, 0.25, 3.0, -4.0, 1.0]
    # r < 1 encourages repetition: positive * 2, negative / 2.
    assert _pen(repetition_penalty=0.5) == [4.0, -0.5, 1.0, 3.0, -1.0, 1.0]


def test_presence_penalty_math() -> None:
    # Only generated tokens {2, 4}; prompt tokens 0, 1 untouched.
    assert _pen(presence_penalty=0.5) == [2.0, -1.0, 0.0, 3.0, -2.5, 1.0]


def test_frequency_penalty_math() -> None:
    # counts: token 2 -> 2, token 4 -> 1.
    assert _pen(frequency_penalty=0.25) == [2.0, -1.0, 0.0, 3.0, -2.25, 1.0]
    # Negative frequency penalty rewards repeats.
    assert _pen(frequency_penalty=-1.0) == [2.0, -1.0, 2.5, 3.0, -1.0, 1.0]


def test_all_penalties_combined() -> None:
    # Repetition first, then presence + frequency.
    # token 2: 0.5 / 2 = 0.25, - 0.5 - 2 * 0.25 = -0.75; token 4: -2 * 2 = -4, - 0.5 - 0.25.
    got = _pen(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    assert got == [1.0, -2.0, -0.75, 3.0, -4.75, 1.0]


def test_penalties_are_per_row() -> None:
    logits = torch.tensor([HAND_LOGITS, HAND_LOGITS])
    params = [SamplingParams(), SamplingParams(presence_penalty=0.5)]
    out = Sampler.apply_penalties(logits, params, [PROMPT + GENERATED] * 2, [2, 2])
    assert out[0].tolist() == HAND_LOGITS
    assert out[1].tolist() == [2.0, -1.0, 0.0, 3.0, -2.5, 1.0]


# --------------------------------------------------------------------------- logprobs


def test_logprobs_are_raw_after_penalties() -> None:
    logits = torch.tensor([HAND_LOGITS, HAND_LOGITS])
    params = [
        SamplingParams(temperature=0.0, repetition_penalty=2.0, logprobs=3),
        SamplingParams(temperature=0.3, top_k=2, repetition_penalty=2.0, logprobs=None),
    ]
    out = Sampler(torch.Generator().manual_seed(0)).sample(
        logits, params, [None, None], [PROMPT + GENERATED] * 2, [2, 2]
    )
    raw = torch.log_softmax(torch.tensor([1.0, -2.0, 0.25, 3.0, -4.0, 1.0]), dim=0)
    assert out.logprobs.dtype == torch.float32 and out.logprobs.shape == (2,)
    for i in range(2):
        # Temperature / top-k do not change the reported logprob.
        assert out.logprobs[i].item() == pytest.approx(raw[out.tokens[i]].item(), abs=1e-6)
    top = out.top_logprobs[0]
    assert top is not None and len(top) == 3
    assert [t for t, _ in top] == [3, 0, 5] or [t for t, _ in top] == [3, 5, 0]
    assert top[0][1] == pytest.approx(raw[3].item(), abs=1e-6)
    assert out.top_logprobs[1] is None


def test_logprobs_zero_gives_empty_list() -> None:
    out = Sampler().sample(
        torch.randn(1, 10), [SamplingParams(temperature=0.0, logprobs=0)], [None], [[]], [0]
    )
    assert out.top_logprobs == [[]]


# --------------------------------------------------------------------------- seeding


def _generate(
    step_logits: list[torch.Tensor],
    params: list[SamplingParams],
    gens: list[torch.Generator | None],
    default_seed: int = 99,
) -> list[list[int]]:
    """Run len(step_logits) sampling steps; penalties see the tokens generated so far."""
    B = len(params)
    s = Sampler(torch.Generator().manual_seed(default_seed))
    prev: list[list[int]] = [[] for _ in range(B)]
    for logits in step_logits:
        out = s.sample(logits, params, gens, [list(p) for p in prev], [0] * B)
        for i, t in enumerate(out.tokens.tolist()):
            prev[i].append(t)
    return prev


def _steps(n_steps: int, B: int, V: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Flat-ish logits so that sampling is genuinely random (not near-greedy).
    return [torch.randn(B, V, generator=g) * 0.5 for _ in range(n_steps)]


def test_same_seed_reproduces_and_different_seed_differs() -> None:
    steps = _steps(30, 1, 64, seed=3)
    p = SamplingParams(seed=42, top_p=0.95, frequency_penalty=0.1)
    a = _generate(steps, [p], [make_generator(42, "cpu")], default_seed=1)
    b = _generate(steps, [p], [make_generator(42, "cpu")], default_seed=2)
    c = _generate(steps, [p], [make_generator(43, "cpu")], default_seed=1)
    assert a == b
    assert a != c


def test_seeded_row_independent_of_batch() -> None:
    V, n = 64, 30
    target = SamplingParams(seed=1234, temperature=0.9, top_k=40, presence_penalty=0.3)
    alone_steps = _steps(n, 1, V, seed=5)
    alone = _generate(alone_steps, [target], [make_generator(1234, "cpu")])[0]

    # Same row at index 2 of a batch of 5, neighbours with other params / seeds / none.
    others = _steps(n, 5, V, seed=6)
    batched_steps = []
    for a, o in zip(alone_steps, others):
        x = o.clone()
        x[2] = a[0]
        batched_steps.append(x)
    params = [
        SamplingParams(),
        SamplingParams(temperature=0.0),
        target,
        SamplingParams(seed=7, top_p=0.5),
        SamplingParams(min_p=0.1),
    ]
    gens = [None, None, make_generator(1234, "cpu"), make_generator(7, "cpu"), None]
    batched = _generate(batched_steps, params, gens, default_seed=12345)[2]
    assert batched == alone
    # And the sequence is genuinely random: another seed gives something else.
    other = _generate(alone_steps, [target], [make_generator(4321, "cpu")])[0]
    assert other != alone


def test_make_generator() -> None:
    assert make_generator(None, "cpu") is None
    g1, g2 = make_generator(5, "cpu"), make_generator(5, torch.device("cpu"))
    assert g1 is not None and g2 is not None
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


# --------------------------------------------------------------------------- validate


def test_defaults_validate() -> None:
    SamplingParams().validate()
    SamplingParams(temperature=0, top_p=1, top_k=-1, seed=0, logprobs=20, stop=["x"]).validate()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.1),
        ("top_k", -2),
        ("top_k", 1.5),
        ("min_p", -0.1),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("presence_penalty", 2.1),
        ("frequency_penalty", -2.1),
        ("max_new_tokens", 0),
        ("logprobs", 21),
        ("logprobs", -1),
        ("seed", "abc"),
        ("stop", [""]),
        ("stop_token_ids", [-1]),
    ],
)
def test_validate_names_field(field: str, value: object) -> None:
    p = SamplingParams(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(RequestError, match=field):
        p.validate()


def test_validate_temperature_message() -> None:
    with pytest.raises(RequestError, match=r"temperature must be in \[0, 2\]"):
        SamplingParams(temperature=3).validate()


# --------------------------------------------------------------------------- stop strings


def _feed(sc: StopChecker, deltas: list[str]) -> tuple[str, bool]:
    out = []
    for d in deltas:
        text, hit = sc.update(d)
        out.append(text)
        if hit:
            return "".join(out), True
    out.append(sc.flush())
    return "".join(out), False


def test_stop_split_across_deltas() -> None:
    sc = StopChecker(["</end>"])
    assert sc.update("Hello <") == ("Hello ", False)  # "<" held: could start "</end>"
    assert sc.update("/e") == ("", False)
    assert sc.update("n") == ("", False)
    assert sc.update("d> tail") == ("", True)
    assert sc.matched == "</end>"
    assert sc.update("more") == ("", True)
    assert sc.flush() == ""


def test_stop_false_start_is_released() -> None:
    sc = StopChecker(["</end>"])
    assert sc.update("a </e") == ("a ", False)
    # "</ex" can no longer become "</end>": everything is released.
    assert sc.update("x") == ("</ex", False)
    assert sc.flush() == ""


def test_stop_cut_exactly_before() -> None:
    sc = StopChecker(["STOP"])
    assert sc.update("abcSTOPdef") == ("abc", True)


def test_multiple_stop_strings_earliest_wins() -> None:
    assert _feed(StopChecker(["world", "lo w"]), ["hel", "lo wor", "ld"]) == ("hel", True)
    # Both in one delta: the earlier occurrence wins, not the earlier-listed string.
    sc = StopChecker(["world", "lo"])
    assert sc.update("hello world") == ("hel", True)
    assert sc.matched == "lo"
    sc = StopChecker(["\n\n", "User:"])
    assert _feed(sc, ["Answer: 4", "2.\nUs", "er: hi"]) == ("Answer: 42.\n", True)
    assert sc.matched == "User:"


def test_stop_shorter_partial_inside_longer() -> None:
    # "aab": after "xaa" the suffix "aa" could start "aab"; after "xaaa" the longest
    # partial is "aa" again (not "aaa"), so exactly one "a" is released.
    sc = StopChecker(["aab"])
    assert sc.update("xaa") == ("x", False)
    assert sc.update("a") == ("a", False)
    assert sc.update("b") == ("", True)


def test_no_stop_flush_returns_held_text() -> None:
    sc = StopChecker(["###"])
    text, hit = sc.update("result ##")
    assert (text, hit) == ("result ", False)
    assert sc.flush() == "##"
    assert sc.flush() == ""


def test_no_holding_when_nothing_matches() -> None:
    sc = StopChecker(["STOP"])
    assert sc.update("hello world") == ("hello world", False)
    assert sc.flush() == ""
    sc = StopChecker([])
    assert sc.update("S") == ("S", False)
    assert _feed(StopChecker(["xyz"]), ["a", "b", "x", "y"]) == ("abxy", False)
