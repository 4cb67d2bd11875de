"""`generate()`: batch generation in-process, as a client of LLMEngine (the same loop the server runs).

Prompts of different lengths need no padding: each row becomes its own engine request. A left-padded
`input_ids` tensor is accepted with its `attention_mask`; the pads are stripped before anything runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from minimax01.engine.engine import LLMEngine
from minimax01.engine.outputs import RequestOutput
from minimax01.engine.protocol import StepModel
from minimax01.errors import RequestError
from minimax01.sampling_params import SamplingParams

if TYPE_CHECKING:
    from minimax01.tokenizer import MiniMaxTokenizer


@dataclass
class GenerationOutput:
    sequences: list[list[int]]  # generated ids per row (prompt excluded; a final stop token included)
    texts: list[str] | None  # generated text per row (stop strings cut), None without tokenizer
    finish_reasons: list[str]  # "stop" | "length" per row
    prompt_lens: list[int]  # prompt tokens per row, pads excluded


@dataclass
class StreamEvent:
    index: int  # row of the batch
    token_id: int | None  # None only for an event without a token (abort / error)
    text: str  # text released with this token (may be "" while held back)
    finished: bool
    finish_reason: str | None


def _prompt_ids(input_ids: Any, attention_mask: torch.Tensor | None, prompts: list[str] | str | None,
                tokenizer: MiniMaxTokenizer | None) -> list[list[int]]:
    """The token ids of every row, pads removed."""
    if (input_ids is None) == (prompts is None):
        raise RequestError("pass exactly one of input_ids and prompts")
    if prompts is not None:
        if tokenizer is None:
            raise RequestError("prompts (text) need a tokenizer; pass tokenizer= or input_ids")
        if isinstance(prompts, str):
            prompts = [prompts]
        return [tokenizer.encode(p) for p in prompts]
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids[None] if input_ids.dim() == 1 else input_ids  # [B, n]
        if ids.dim() != 2:
            raise RequestError(f"input_ids must have shape [batch, seq], got {list(input_ids.shape)}")
        if attention_mask is None:
            return ids.tolist()
        mask = attention_mask[None] if attention_mask.dim() == 1 else attention_mask
        if mask.shape != ids.shape:
            raise RequestError(f"attention_mask shape {list(mask.shape)} must equal input_ids shape {list(ids.shape)}")
        # Each row keeps exactly its masked-in tokens; whichever side the pads were on, none reaches the model.
        return [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
    if attention_mask is not None:
        raise RequestError("attention_mask is only accepted with an input_ids tensor")
    if isinstance(input_ids, (list, tuple)) and input_ids and all(isinstance(t, int) for t in input_ids):
        return [list(input_ids)]  # one prompt given as a flat list
    if not isinstance(input_ids, (list, tuple)) or not input_ids:
        raise RequestError("input_ids must be a LongTensor [batch, seq] or a non-empty list of token-id lists")
    return [row.tolist() if isinstance(row, torch.Tensor) else list(row) for row in input_ids]


def _row_seeds(seed: int | list[int] | None, batch: int) -> list[int | None]:
    if seed is None:
        return [None] * batch
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise RequestError(f"seed has {len(seed)} entries for {batch} prompts")
        return list(seed)
    # One seed for the batch: row i gets seed + i, so that identical prompts still draw different samples.
    return [seed + i for i in range(batch)]


def generate(
    model: StepModel,
    input_ids: torch.Tensor | list[list[int]] | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    prompts: list[str] | str | None = None,
    tokenizer: MiniMaxTokenizer | None = None,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    seed: int | list[int] | None = None,
    stop_token_ids: list[int] | None = None,
    stop: list[str] | None = None,
    ignore_eos: bool = False,
    stream: bool = False,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 512,
) -> GenerationOutput | Iterator[StreamEvent]:
    """Generates a continuation of every prompt.

    do_sample=False is greedy (argmax); temperature / top_k / top_p / min_p only apply with do_sample=True
    (a warning says so otherwise). Penalties apply either way. `seed`: an int seeds row i with seed + i, a
    list gives each row its own seed; seeded rows do not depend on the other rows. `stop_token_ids`
    replaces the default stop ids (tokenizer EOS, else config.eos_token_id, else 200020).
    At most `max_num_seqs` rows run at once; the rest queue. With stream=True returns an iterator of
    StreamEvent (one per generated token, rows interleaved) instead of a GenerationOutput.
    """
    rows = _prompt_ids(input_ids, attention_mask, prompts, tokenizer)
    knobs = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
    if not do_sample and any(v is not None for v in knobs.values()):
        warnings.warn("temperature/top_k/top_p/min_p are ignored with do_sample=False (greedy decoding)",
                      stacklevel=2)
    sampling = {k: v for k, v in knobs.items() if v is not None} if do_sample else {"temperature": 0.0}
    params = [
        SamplingParams(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                       presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, seed=s,
                       stop=list(stop or []), ignore_eos=ignore_eos, **sampling)
        for s in _row_seeds(seed, len(rows))
    ]
    for p in params:
        p.validate()
    longest = max((len(r) for r in rows), default=0)
    if longest + max_new_tokens > model.config.max_position_embeddings:
        raise RequestError(f"max_new_tokens={max_new_tokens} with a {longest}-token prompt exceeds the model's "
                           f"max_position_embeddings ({model.config.max_position_embeddings})")
    engine = LLMEngine(model, tokenizer, max_num_seqs=max(1, min(len(rows), max_num_seqs)),
                       max_model_len=longest + max_new_tokens, max_num_batched_tokens=max_num_batched_tokens,
                       default_stop_token_ids=stop_token_ids)
    for i, (ids, p) in enumerate(zip(rows, params)):
        try:
            engine.add_request(ids, p, request_id=str(i))
        except RequestError as e:
            raise RequestError(f"prompt {i}: {e}") from e
    events = _events(engine)
    if stream:
        return events
    sequences: list[list[int]] = [[] for _ in rows]
    texts = [""] * len(rows)
    reasons = [""] * len(rows)
    for ev in events:
        if ev.token_id is not None:
            sequences[ev.index].append(ev.token_id)
        texts[ev.index] += ev.text
        if ev.finished:
            reasons[ev.index] = ev.finish_reason or ""
    return GenerationOutput(sequences=sequences, texts=texts if tokenizer is not None else None,
                            finish_reasons=reasons, prompt_lens=[len(r) for r in rows])


def _events(engine: LLMEngine) -> Iterator[StreamEvent]:
    """Runs the engine to completion, one StreamEvent per generated token."""
    while engine.has_unfinished():
        for out in engine.step():
            yield from _to_events(out)


def _to_events(out: RequestOutput) -> Iterator[StreamEvent]:
    index = int(out.request_id)
    if not out.new_token_ids:
        yield StreamEvent(index, None, out.new_text, out.finished, out.finish_reason)
        return
    last = len(out.new_token_ids) - 1
    for k, token in enumerate(out.new_token_ids):
        yield StreamEvent(index, token, out.new_text if k == last else "", out.finished and k == last,
                          out.finish_reason if k == last else None)
