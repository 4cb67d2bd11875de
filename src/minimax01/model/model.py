"""MiniMaxForCausalLM: embeddings -> 80 decoder layers -> final RMSNorm -> lm_head (SPEC §5).

Two ways in:
- `forward_step(tokens, batch, store)`: the flattened variable-length step used by the engine (DESIGN.md).
- `model(input_ids, attention_mask=None, cache=None)`: the familiar 2-D call. It strips left padding,
  runs the flattened step and scatters logits back to `[batch, seq, vocab]`, so padding is exact by
  construction (pads never reach a layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from minimax01.cache import BatchInfo, StateStore
from minimax01.config import MiniMaxConfig
from minimax01.errors import RequestError
from minimax01.model.layer import DecoderLayer
from minimax01.model.norm import RMSNorm

if TYPE_CHECKING:
    from minimax01.generation import GenerationOutput


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # float32 [batch, seq, vocab] (pad positions are 0)
    cache: "MiniMaxCache | None"


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


class MiniMaxModel(nn.Module):
    def __init__(self, config: MiniMaxConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MiniMaxForCausalLM(nn.Module):
    def __init__(self, config: MiniMaxConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MiniMaxModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    # ------------------------------------------------------------------ flattened step
    @torch.no_grad()
    def forward_step(
        self,
        tokens: torch.Tensor,  # [T] new tokens of all sequences, concatenated
        batch: BatchInfo,
        store: StateStore,
        logits_index: torch.Tensor | None = None,  # rows of [T] to compute logits for (None = all)
    ) -> torch.Tensor:
        """Runs one step and advances the store. Returns float32 logits [len(logits_index) or T, vocab]."""
        kv_pos = store.prepare(batch)  # [T] where softmax layers write this step's keys/values
        logits = self.run_layers(tokens, batch, store, kv_pos, logits_index)
        store.commit(batch)
        return logits

    def run_layers(self, tokens: torch.Tensor, batch: BatchInfo, store: StateStore, kv_pos: torch.Tensor,
                   logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """The device work of a step whose KV blocks `prepare` reserved (kv_pos [T]); no store bookkeeping, so
        a CUDA graph can capture it (engine/cuda_graph.py). Returns float32 logits."""
        h = self.model.embed_tokens(tokens)  # [T, hidden]
        for layer in self.model.layers:
            h = layer(h, batch, store, kv_pos)
        if logits_index is not None:
            h = h[logits_index]
        return self.lm_head(self.model.norm(h)).float()

    def new_store(self, max_seqs: int, **kw: Any) -> StateStore:
        # fp32 lightning state whatever the model dtype (SPEC §10); fp64 models (math tests) keep fp64.
        kw.setdefault("state_dtype", torch.float64 if self.dtype == torch.float64 else torch.float32)
        # Heads as the layers hold them: after parallel.shard_ only this rank's, fewer than the config's.
        for layer in self.model.layers:
            if layer.is_linear:
                kw.setdefault("num_heads", layer.self_attn.num_heads)
            else:
                kw.setdefault("num_kv_heads", layer.self_attn.num_kv_heads)
        return StateStore(self.config, max_seqs, device=self.device, dtype=self.dtype, **kw)

    # ------------------------------------------------------------------ 2-D convenience call
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
            step_logits = self.forward_step(tokens, batch, cache.store, logits_index)
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
                        device: str | torch.device = "cpu", **kw: Any) -> "MiniMaxForCausalLM":
        """Loads a Hugging Face checkpoint directory (original or transformers-v5 tensor names)."""
        from minimax01.weights import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device, **kw)

    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
        """Writes config.json + sharded safetensors + index in the original layout."""
        from minimax01.weights import save_pretrained

        save_pretrained(self, path, max_shard_bytes=max_shard_bytes)

    def generate(self, *args: Any, **kw: Any) -> "GenerationOutput":
        """See `minimax01.generation.generate`."""
        from minimax01.generation import generate

        return generate(self, *args, **kw)


@torch.no_grad()
def init_random_weights_(model: MiniMaxForCausalLM, seed: int = 0) -> MiniMaxForCausalLM:
    """Random weights that make mistakes visible in tests (SPEC §11): Linear N(0, 1/fan_in), lightning qkv
    ×0.1 (so the 1e-6 norm eps matters), embeddings N(0, 1), RMSNorm weights 1 + 0.2·N(0, 1)."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32) * std + mean)

    for name, p in model.named_parameters():
        if name.endswith("experts.w13") or name.endswith("experts.w2"):
            normal(p, p.shape[-1] ** -0.5)
        elif "norm" in name:
            normal(p, 0.2, 1.0)
        elif "embed_tokens" in name:
            normal(p, 1.0)
        else:  # nn.Linear weight [out, in]
            normal(p, p.shape[1] ** -0.5)
            if name.endswith("qkv_proj.weight"):
                p.mul_(0.1)
    return model
