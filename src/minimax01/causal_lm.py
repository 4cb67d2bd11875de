"""`MiniMaxForCausalLM`, the public model class: the network of `model/` (`MiniMaxLM`) plus the conveniences
a user expects of a Hugging Face style causal LM: `from_pretrained`, `save_pretrained`, `generate` and the 2-D
call `model(input_ids, attention_mask=None, cache=None)`.

It sits above the model, weights and generation layers so that the math (`model/`) imports none of them. The
2-D call strips left padding, runs the flattened `step` in column windows and scatters the logits
back to `[batch, seq, vocab]`, so padding is exact by construction (pads never reach a layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minimax01.cache import BatchInfo, StateStore
from minimax01.errors import RequestError
from minimax01.generation import GenerationOutput, generate
from minimax01.model.model import MiniMaxLM
from minimax01.weights import load_pretrained, save_pretrained


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # float32 [batch, seq, vocab] (pad positions are 0)
    cache: MiniMaxCache | None


class MiniMaxCache:
    """The cache of the 2-D convenience call: a private StateStore with one slot per batch row."""

    def __init__(self, store: StateStore, batch_size: int) -> None:
        self.store = store
        self.slots = [store.allocate() for _ in range(batch_size)]
        self.num_columns = 0  # columns of input_ids seen so far (pads included), to slice full-width masks

    @property
    def batch_size(self) -> int:
        return len(self.slots)

    def seq_lens(self) -> list[int]:
        """Real (non-pad) tokens held for each row."""
        return [self.store.seq_lens[s] for s in self.slots]


class MiniMaxForCausalLM(MiniMaxLM):
    """MiniMaxLM with the 2-D call, loading, saving and generation (see the module docstring)."""

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,  # [batch, seq] (or [seq])
        attention_mask: torch.Tensor | None = None,  # [batch, seq] or [batch, cached columns + seq]; 1 = token
        cache: MiniMaxCache | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,  # 0 = logits for every position, k = only the last k columns
        prefill_chunk_size: int | None = 8192,  # tokens per row and step (None = all at once)
    ) -> CausalLMOutput:
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise RequestError("input_ids must be an integer tensor of shape [batch, seq]")
        B, n = input_ids.shape
        if n and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise RequestError(f"input_ids must lie in [0, {self.config.vocab_size})")
        if cache is None:
            cache = MiniMaxCache(self.new_store(B), B)
        elif cache.batch_size != B:
            raise RequestError(f"cache holds {cache.batch_size} sequences but input_ids has {B} rows")
        mask = self._new_token_mask(attention_mask, cache, B, n, use_cache)  # [B, n] bool
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        first = max(0, n - (logits_to_keep or n))  # first column whose logits are returned
        keep = torch.zeros_like(mask)
        keep[:, first:] = True
        # Only the kept columns: [B, n, vocab] fp32 would be 800 GB at 1M tokens of the real vocab.
        logits = torch.zeros(B, n - first, self.config.vocab_size, dtype=torch.float32, device=self.device)
        # Column windows of at most `prefill_chunk_size`: activations stay O(chunk) however long the prompt;
        # lightning layers carry their fp32 state and softmax layers their KV cache from window to window.
        chunk = prefill_chunk_size or max(n, 1)
        for c0 in range(0, n, chunk):
            win_mask, win_keep = mask[:, c0:c0 + chunk], keep[:, c0:c0 + chunk]
            num_new = win_mask.sum(1).tolist()
            rows = [b for b in range(B) if num_new[b]]
            if not rows:
                continue
            lens = cache.seq_lens()
            batch = BatchInfo([cache.slots[b] for b in rows], [lens[b] for b in rows], [num_new[b] for b in rows],
                              device=self.device)
            logits_index = win_keep[win_mask].nonzero(as_tuple=True)[0]
            tokens = input_ids[:, c0:c0 + chunk][win_mask]
            step_logits = self.step(tokens, batch, cache.store, logits_index)
            lo = max(c0, first)  # win_keep is False left of `first`
            if lo < c0 + chunk:
                logits[:, lo - first:c0 + chunk - first][(win_mask & win_keep)[:, lo - c0:]] = step_logits
        cache.num_columns += n
        return CausalLMOutput(logits=logits, cache=cache if use_cache else None)

    @staticmethod
    def _new_token_mask(attention_mask: torch.Tensor | None, cache: MiniMaxCache, B: int, n: int,
                        use_cache: bool) -> torch.Tensor:
        """The [B, n] boolean mask of the new columns, checked for left padding only."""
        if attention_mask is None:
            return torch.ones(B, n, dtype=torch.bool)
        mask = attention_mask.detach().cpu()
        if mask.dim() != 2 or mask.shape[0] != B or mask.shape[1] not in (n, cache.num_columns + n):
            raise RequestError(f"attention_mask must have shape [{B}, {n}] or [{B}, {cache.num_columns + n}], "
                               f"got {list(mask.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise RequestError("attention_mask may only contain 0 and 1")
        mask = mask[:, mask.shape[1] - n:].bool()
        if use_cache:
            held = cache.seq_lens()
            for b in range(B):
                row = mask[b]
                first = int(row.float().argmax()) if bool(row.any()) else n
                if (held[b] and not bool(row.all())) or not bool(row[first:].all()):
                    raise RequestError(
                        f"attention_mask row {b} has padding after a token (right padding). Lightning "
                        f"attention would decay its state over the pads; use left padding (pads first).")
        return mask

    # ------------------------------------------------------------------ loading / saving / generation
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", **kw: Any) -> MiniMaxForCausalLM:
        """Loads a Hugging Face checkpoint directory (original or transformers-v5 tensor names); keyword
        arguments as `weights.load_pretrained` (progress, quantize)."""
        return load_pretrained(path, dtype=dtype, device=device, model_cls=cls, **kw)

    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
        """Writes config.json + sharded safetensors + index in the original layout."""
        save_pretrained(self, path, max_shard_bytes=max_shard_bytes)

    def generate(self, *args: Any, **kw: Any) -> GenerationOutput:
        """See `minimax01.generation.generate`."""
        return generate(self, *args, **kw)
