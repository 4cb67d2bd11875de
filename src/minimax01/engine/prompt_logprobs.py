"""Prompt logprobs: how likely the model found each prompt token, for the requests that ask
(`SamplingParams.prompt_logprobs`; `echo` + `logprobs` and vLLM's `prompt_logprobs` in the server).

The logits at position q score the token at q + 1, so a prefill chunk [start, start + n) scores prompt tokens
start + 1 .. start + n. The engine requests just these rows of just these requests' chunks (`logits_index`),
so other requests in the batch pay nothing, and the rows a step produces are bounded by its token budget; they
are reduced here a slice at a time, so a long prompt never materialises a [prompt, vocab] float32 tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Rows log-softmaxed at once: bounds the temporary to SLICE_ROWS x vocab floats (200 MB at Text-01's 200K vocab
# for 256 rows) whatever the chunk size.
SLICE_ROWS = 64


@dataclass(frozen=True)
class PromptLogprob:
    """The score of one prompt token (every prompt token but the first, which nothing predicts)."""

    token_id: int
    logprob: float  # log-probability of token_id under the raw distribution (no temperature, no penalties)
    rank: int  # 1 + the number of tokens the model found strictly more likely
    top: list[tuple[int, float]]  # the `top_n` most likely (token id, logprob), most likely first


def scored_positions(prompt_len: int, num_scored: int, start: int, num_new: int) -> range:
    """Positions q of a chunk [start, start + num_new) whose logits score a prompt token not yet scored: q + 1 is
    a prompt position after the `num_scored` + 1 already known (the first token is never scored). A preempted
    request recomputes its prompt; the positions it scored before are not scored again."""
    return range(max(start, num_scored), min(start + num_new, prompt_len - 1))


def score_rows(logits: torch.Tensor, targets: list[int], top_n: int) -> list[PromptLogprob]:
    """Scores `targets[i]` under the logits row i ([len(targets), vocab] float32)."""
    scores: list[PromptLogprob] = []
    for lo in range(0, len(targets), SLICE_ROWS):
        lsm = torch.log_softmax(logits[lo:lo + SLICE_ROWS], dim=-1)
        target = torch.tensor(targets[lo:lo + SLICE_ROWS], device=lsm.device)
        chosen = lsm.gather(1, target[:, None])
        ranks = (lsm > chosen).sum(dim=1) + 1
        k = min(top_n, lsm.shape[1])
        top_vals, top_ids = lsm.topk(k, dim=1) if k else (lsm[:, :0], lsm[:, :0].long())
        for t, lp, rank, ids, vals in zip(target.tolist(), chosen[:, 0].tolist(), ranks.tolist(),
                                          top_ids.tolist(), top_vals.tolist()):
            scores.append(PromptLogprob(t, lp, rank, list(zip(ids, vals))))
    return scores
