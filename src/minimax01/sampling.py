"""Token sampling for a continuously batched inference engine.

Every row of a batch is a different request with its own :class:`SamplingParams`, so
all the transforms here take per-row parameters and are vectorised over the batch as
``[B, 1]`` tensors rather than looping over requests.  The only per-row loop left is
the draw of random numbers for seeded rows, which is what makes a seeded request's
output independent of whichever other requests happen to share its batch.

Order of operations in :meth:`Sampler.sample` (same as vLLM / HF):

1. penalties on the raw logits: repetition (HF/CTRL, prompt + output), then
   presence / frequency (OpenAI, output only);
2. "raw" log-probabilities = ``log_softmax`` of the penalised logits; these are what is
   reported in :attr:`SampleOutput.logprobs` / ``top_logprobs``;
3. greedy rows (``temperature == 0`` or ``top_k == 1``) take ``argmax`` of (1);
4. other rows: temperature, then top-k, then top-p on the renormalised distribution,
   then min-p, then one categorical draw (exponential race with the row's generator).

Requests with a grammar (structured outputs) have their rows masked first: tokens the grammar does not allow
get ``-inf`` before step 1, so they are never drawn and every later step sees only allowed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minimax01.sampling_params import SamplingParams
from minimax01.structured import apply_token_bitmask

__all__ = ["SampleOutput", "Sampler", "make_generator"]

def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """Return a generator on ``device`` seeded with ``seed``, or ``None`` when unseeded.

    The generator must live on the same device as the logits: torch refuses to fill
    a CUDA tensor from a CPU generator.
    """
    if seed is None:
        return None
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


@dataclass
class SampleOutput:
    """Result of :meth:`Sampler.sample` for a batch of ``B`` rows.

    Attributes:
        tokens: ``LongTensor[B]``, the chosen token per row.
        logprobs: ``float32[B]``, log-probability of the chosen token under the *raw*
            distribution: ``log_softmax`` of the logits after penalties, before
            temperature / top-k / top-p / min-p (vLLM's default "raw" logprobs).  This
            is independent of the sampling knobs, so it is comparable across requests
            and finite even for tokens a truncation step would have excluded. For a row masked by a grammar it is
            the distribution over the tokens the grammar allows (the others have ``-inf``).
        top_logprobs: per row, ``None`` if the request asked for no logprobs, else a
            list of ``(token_id, logprob)`` of the ``params.logprobs`` most likely
            tokens under the same raw distribution, most likely first.
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor
    top_logprobs: list[list[tuple[int, float]] | None]


class Sampler:
    """Batched sampler with per-row parameters and per-row random generators.

    Args:
        default_generator: generator shared by all rows whose request has no seed.
            ``None`` uses torch's global RNG for the logits' device.
    """

    def __init__(self, default_generator: torch.Generator | None = None) -> None:
        self.default_generator = default_generator

    # ------------------------------------------------------------------ penalties
    @staticmethod
    def apply_penalties(
        logits: torch.Tensor,
        params: list[SamplingParams],
        prev_tokens: list[list[int]],
        prompt_lens: list[int],
    ) -> torch.Tensor:
        """Return a penalised copy of ``logits`` (``[B, V]``); the input is not modified.

        * repetition penalty (HF/CTRL), over every token id seen in prompt + output:
          ``l / r`` if ``l > 0`` else ``l * r``;
        * presence / frequency penalty (OpenAI), over generated tokens only:
          ``l -= presence * (count > 0) + frequency * count``.

        Rows whose penalties are neutral are left bit-exact (``x / 1``, ``x * 1`` and
        ``x - 0`` are exact in IEEE arithmetic), so no per-row branching is needed.
        """
        B, V = logits.shape
        _check_batch(B, params, prev_tokens, prompt_lens)
        out = logits.clone()
        need_rep = any(p.repetition_penalty != 1.0 for p in params)
        need_pf = any(p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 for p in params)
        if not (need_rep or need_pf):
            return out
        dev = logits.device

        if need_rep:
            # Seen-token mask over prompt + output, built with one scatter.
            rows, cols = _flatten_ids(prev_tokens, [0] * B, V, dev)
            seen = torch.zeros(B, V, dtype=torch.bool, device=dev)
            seen[rows, cols] = True
            r = torch.tensor([p.repetition_penalty for p in params], dtype=out.dtype, device=dev)
            r = r.unsqueeze(1)
            penalised = torch.where(out > 0, out / r, out * r)
            out = torch.where(seen, penalised, out)

        if need_pf:
            # Occurrence counts over generated tokens only (OpenAI semantics).
            rows, cols = _flatten_ids(prev_tokens, prompt_lens, V, dev)
            counts = torch.zeros(B, V, dtype=out.dtype, device=dev)
            counts.index_put_((rows, cols), torch.ones_like(cols, dtype=out.dtype), accumulate=True)
            pres = torch.tensor([p.presence_penalty for p in params], dtype=out.dtype, device=dev)
            freq = torch.tensor([p.frequency_penalty for p in params], dtype=out.dtype, device=dev)
            out = out - (pres.unsqueeze(1) * (counts > 0).to(out.dtype) + freq.unsqueeze(1) * counts)
        return out

    # ------------------------------------------------------------------ truncation
    @staticmethod
    def apply_truncation(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Temperature, top-k, top-p and min-p for non-greedy rows; masked logits are ``-inf``.

        Returns the logits of the distribution actually sampled from (temperature-scaled,
        not normalised).  All rows must have ``temperature > 0``.

        * top-k keeps exactly ``k`` tokens (ties at the boundary broken by sort order);
        * top-p is applied to the distribution renormalised after top-k and keeps the
          smallest prefix (by probability) whose mass is ``>= top_p``;
        * min-p drops tokens with ``p < min_p * p_max``.  The ratio ``p / p_max``
          equals ``exp(l - l_max)`` and the most likely token survives top-k and top-p,
          so min-p gives the same result whether it runs before or after them.
        """
        B, V = logits.shape
        dev, dt = logits.device, logits.dtype
        temp = torch.tensor([p.temperature for p in params], dtype=dt, device=dev).unsqueeze(1)
        # Subtract the row max before dividing: softmax is shift-invariant, and it keeps
        # a tiny temperature from turning finite logits into +inf (and inf - inf = NaN).
        x = (logits - logits.amax(dim=1, keepdim=True)) / temp

        ks = [V if (p.top_k <= 0 or p.top_k >= V) else p.top_k for p in params]
        use_k = any(k < V for k in ks)
        use_p = any(p.top_p < 1.0 for p in params)
        if use_k or use_p:
            # One descending sort serves both top-k (positional cut) and top-p (prefix sums).
            sorted_x, order = x.sort(dim=1, descending=True)
            remove = torch.zeros(B, V, dtype=torch.bool, device=dev)
            if use_k:
                pos = torch.arange(V, device=dev).unsqueeze(0)
                k_t = torch.tensor(ks, device=dev).unsqueeze(1)
                remove |= pos >= k_t
                sorted_x = sorted_x.masked_fill(remove, float("-inf"))
            if use_p:
                probs = sorted_x.softmax(dim=1)
                # Mass strictly before each position; a token is kept iff the tokens
                # above it have not yet reached top_p.  Position 0 always survives
                # because its exclusive mass is 0 < top_p.
                before = probs.cumsum(dim=1) - probs
                top_p = torch.tensor([p.top_p for p in params], dtype=dt, device=dev).unsqueeze(1)
                # top_p == 1 rows are excluded outright: rounding in cumsum could
                # otherwise drop the far tail even though the user asked for no cut.
                remove |= (before >= top_p) & (top_p < 1.0)
            x = torch.empty_like(x).scatter_(1, order, sorted_x.masked_fill(remove, float("-inf")))

        if any(p.min_p > 0.0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], dtype=dt, device=dev).unsqueeze(1)
            # x is already shifted so the row max is 0: exp(x) = p / p_max.
            x = x.masked_fill(x.exp() < min_p, float("-inf"))
        return x

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        prev_tokens: list[list[int]],
        prompt_lens: list[int],
        masked_rows: list[int] | None = None,
        bitmask: torch.Tensor | None = None,
    ) -> SampleOutput:
        """Choose one token per row.

        Args:
            logits: ``float32[B, V]`` next-token logits.
            params: one :class:`SamplingParams` per row (assumed validated).
            generators: per row, the request's generator (see :func:`make_generator`)
                or ``None`` to use the shared default generator.
            prev_tokens: per row, prompt + generated token ids so far (penalties).
            prompt_lens: per row, how many leading ids of ``prev_tokens`` are prompt.
            masked_rows: the rows of requests with a grammar, and ``bitmask`` int32
                ``[len(masked_rows), ceil(V / 32)]`` their allowed tokens (``structured.bitmask``); only these
                rows are masked, the others are bit-identical to an unmasked call.

        A row with a generator draws exactly ``V`` random numbers per non-greedy step
        from it and nothing else, so its token sequence depends only on its own seed and
        logits, never on the other rows in the batch.  Greedy rows draw nothing.
        """
        if logits.dim() != 2:
            raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
        B, V = logits.shape
        if len(generators) != B:
            raise ValueError(f"expected {B} generators, got {len(generators)}")
        logits = logits.float()
        dev = logits.device
        if masked_rows:
            logits = apply_token_bitmask(logits, masked_rows, bitmask)

        penalised = self.apply_penalties(logits, params, prev_tokens, prompt_lens)
        raw_logprobs = torch.log_softmax(penalised, dim=1)

        # argmax is the definition of greedy; top_k == 1 is routed here too so that it
        # is *exactly* greedy (same tie-breaking), not merely equal in distribution.
        tokens = penalised.argmax(dim=1)
        sampled_rows = [i for i, p in enumerate(params) if not p.is_greedy]
        if sampled_rows:
            idx = torch.tensor(sampled_rows, device=dev)
            sub_params = [params[i] for i in sampled_rows]
            final = self.apply_truncation(penalised.index_select(0, idx), sub_params)
            noise = self._exponential_noise(
                len(sampled_rows), V, [generators[i] for i in sampled_rows], dev, final.dtype
            )
            # Exponential race: argmax_i p_i / E_i with E_i ~ Exp(1) is distributed as
            # Categorical(p).  In log space: argmax_i (logit_i - log E_i); masked tokens
            # stay at -inf and can never win.
            drawn = (final - noise.log()).argmax(dim=1)
            tokens = tokens.index_copy(0, idx, drawn)

        chosen_lp = raw_logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        top_lps = self._top_logprobs(raw_logprobs, params)
        return SampleOutput(tokens=tokens, logprobs=chosen_lp, top_logprobs=top_lps)

    def _exponential_noise(
        self,
        n: int,
        V: int,
        gens: list[torch.Generator | None],
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Exp(1) noise ``[n, V]``: seeded rows from their own generator, the rest shared."""
        noise = torch.empty(n, V, device=device, dtype=dtype)
        unseeded = [j for j, g in enumerate(gens) if g is None]
        if unseeded:
            # One call for all unseeded rows: they share a stream anyway.
            block = torch.empty(len(unseeded), V, device=device, dtype=dtype)
            block.exponential_(generator=self.default_generator)
            noise[unseeded] = block
        for j, g in enumerate(gens):
            if g is not None:
                noise[j].exponential_(generator=g)
        # An exact 0 would give log(0) = -inf and then -inf - (-inf) = NaN on masked
        # tokens (and argmax treats NaN as the max); clamp to the smallest normal.
        return noise.clamp_min_(torch.finfo(dtype).tiny)

    @staticmethod
    def _top_logprobs(
        raw_logprobs: torch.Tensor, params: list[SamplingParams]
    ) -> list[list[tuple[int, float]] | None]:
        """Per row, the ``params.logprobs`` most likely (token, logprob) pairs, or None."""
        want = [p.logprobs for p in params]
        k_max = max((n for n in want if n), default=0)
        result: list[list[tuple[int, float]] | None] = [None if n is None else [] for n in want]
        if k_max == 0:
            return result
        k_max = min(k_max, raw_logprobs.shape[1])
        # One topk for the whole batch, one device->host copy, then slice per row.
        vals, ids = raw_logprobs.topk(k_max, dim=1)
        vals_l, ids_l = vals.tolist(), ids.tolist()
        for i, n in enumerate(want):
            if n:
                # A grammar's masked tokens have logprob -inf: not candidates, and not representable in JSON.
                result[i] = [(t, v) for t, v in zip(ids_l[i][:n], vals_l[i][:n]) if v != float("-inf")]
        return result


def _check_batch(
    B: int, params: list[SamplingParams], prev_tokens: list[list[int]], prompt_lens: list[int]
) -> None:
    if not (len(params) == len(prev_tokens) == len(prompt_lens) == B):
        raise ValueError(
            f"batch size mismatch: logits {B}, params {len(params)}, "
            f"prev_tokens {len(prev_tokens)}, prompt_lens {len(prompt_lens)}"
        )


def _flatten_ids(
    prev_tokens: list[list[int]], starts: list[int], V: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) index pairs for ``prev_tokens[i][starts[i]:]`` over all rows."""
    rows: list[int] = []
    cols: list[int] = []
    for i, (toks, s) in enumerate(zip(prev_tokens, starts)):
        seg = toks[s:]
        rows.extend([i] * len(seg))
        cols.extend(seg)
    r = torch.tensor(rows, dtype=torch.long, device=device)
    c = torch.tensor(cols, dtype=torch.long, device=device)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= V):
        raise ValueError(f"token id out of range [0, {V}) in prev_tokens")
    return r, c
