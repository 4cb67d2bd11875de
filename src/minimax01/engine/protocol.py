"""`StepModel`: everything the engine uses of a model.

The engine never looks inside a model: it sizes its KV budget from `state_layout`, creates its one state store
with `new_store` and runs every scheduled batch through ONE `step`, which also does the store's bookkeeping
(KV blocks reserved before the layers run, lengths committed after). Implementations:
- `model.model.MiniMaxLM`, the network itself (structurally: the model layer does not import the engine);
- `engine.cuda_graph.DecodeGraphRunner`, a wrapper that replays captured CUDA graphs for the decode steps it has
  one for and hands every other step to the StepModel it wraps;
- `parallel.lockstep.LockstepModel`, a wrapper that sends every new store and every step to the follower ranks
  of a sharded model before running it on the StepModel it wraps. Follower ranks run the same StepModel over a
  mirrored store, so any StepModel (a graph runner too) can sit under it on every rank.
"""

from __future__ import annotations

from typing import Protocol

import torch

from minimax01.cache import BatchInfo, StateLayout, StateStore
from minimax01.config import MiniMaxConfig


class StepModel(Protocol):
    """A model as the engine sees it (see the module docstring)."""

    @property
    def config(self) -> MiniMaxConfig: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def state_layout(self) -> StateLayout:
        """The heads whose state this model keeps (tensor parallel: this rank's share): sizes the KV budget."""
        ...

    def new_store(self, max_seqs: int, num_kv_blocks: int | None = None, kv_block_size: int = 64) -> StateStore:
        """A store for `max_seqs` sequences (`num_kv_blocks=None`: a KV pool that grows on demand)."""
        ...

    def step(self, tokens: torch.Tensor, batch: BatchInfo, store: StateStore,
             logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """Runs one flattened step (tokens [T]) of the sequences of `batch` and advances `store`. Returns float32
        logits [len(logits_index) or T, vocab]."""
        ...
