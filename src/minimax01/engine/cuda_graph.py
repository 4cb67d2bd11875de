"""CUDA graphs for pure-decode steps (issue 9, item 5).

A decode step of a small batch is launch-bound: hundreds of small kernels for ~0.3 ms of memory traffic per
layer. `DecodeGraphRunner` captures `model.run_layers` once per batch size of `SIZES` and replays it; a batch
of n sequences runs in the graph of the next size up, the extra rows padded with a dummy slot the runner
owns (its lightning state and its one KV block absorb the padding rows' writes; their logits are dropped).

What makes the step capturable: the store's bookkeeping (`prepare` / `commit`: block reservation, host lists)
stays outside the graph; the graph reads this step's tokens, positions, slots and KV write positions from
static device buffers filled before each replay, and every kernel on the decode path takes its sequence
lengths and block tables from device tensors (kernels.paged_decode_attention, lightning_decode, moe_experts).
The store's tensors must not be reallocated after capture: the runner needs a fixed KV budget and reserves
the device block table's full width up front.

On by default on CUDA; `MINIMAX01_CUDA_GRAPHS=0` (or `LLMEngine(cuda_graphs=False)`) turns them off. Validated
on an H100: the GPU tests capture fp32 and bf16 models and match eager decoding, and greedy CLI text is
identical with and without graphs (bench/results/decode-step-*.md for the speed).
"""

from __future__ import annotations

import os
import warnings

import torch

from minimax01 import kernels
from minimax01.cache import BatchInfo, StateStore
from minimax01.model.model import MiniMaxForCausalLM

SIZES = (1, 2, 4, 8, 16, 32, 64)


def graphs_enabled(model: object, flag: bool | None = None) -> bool:
    """The engine's choice: `flag` when given, else on for CUDA with the Triton kernels unless
    MINIMAX01_CUDA_GRAPHS=0 (the torch reference path of the softmax layer is not capturable). Only for a plain
    MiniMaxForCausalLM: a parallel.LockstepModel must broadcast every step to its followers, which a replayed
    graph would skip. A capture that fails anyway falls back to eager decoding with a RuntimeWarning."""
    plain = isinstance(model, MiniMaxForCausalLM)
    if flag and not plain:
        raise ValueError(f"CUDA-graph decode needs a MiniMaxForCausalLM, not a {type(model).__name__}")
    if flag is not None:
        return flag
    return (plain and model.device.type == "cuda" and os.environ.get("MINIMAX01_CUDA_GRAPHS", "1") != "0"
            and kernels.use_triton(model.device) and model.dtype != torch.float64)  # fp64: reference kernels


class DecodeGraphRunner:
    """Replays captured decode steps of `model` over `store` for batches of up to max(sizes) sequences.

    Takes one slot (the padding dummy) and one KV block of the store for itself. `capture=False` (default off
    CUDA) runs the same static-buffer step eagerly instead of replaying (CPU tests of the padding logic)."""

    def __init__(self, model: MiniMaxForCausalLM, store: StateStore, max_model_len: int,
                 sizes: tuple[int, ...] = SIZES, capture: bool | None = None) -> None:
        if store.growable:
            raise ValueError("CUDA-graph decode needs a fixed KV budget (the pool must not be reallocated)")
        self.model, self.store = model, store
        self.capture = store.device.type == "cuda" if capture is None else capture
        cap = min(store.max_seqs - 1, max(sizes))  # the largest batch the store's other slots can hold
        if cap < 1:
            raise ValueError("CUDA-graph decode needs a store with a slot to spare for padding")
        self.sizes = tuple(sorted({s for s in sizes if s < cap} | {cap}))
        device = store.device
        store.reserve_block_table(-(-max_model_len // store.kv_block_size))
        self.dummy = store.allocate()
        init = BatchInfo([self.dummy], [0], [1], device=device)
        pos = store.prepare(init)  # the dummy's one KV position (none without softmax layers)
        store.commit(init)
        self.dummy_pos = int(pos[0]) if pos.numel() else 0  # padding rows write their K/V there
        n = self.sizes[-1]
        # Static inputs of every graph: tokens, positions, slots, KV write positions (views per size).
        self.inputs = torch.zeros(4, n, dtype=torch.long, device=device)
        self.batches: dict[int, BatchInfo] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None  # one memory pool shared by all graphs (they never run at the same time)

    def size_for(self, n: int) -> int | None:
        """The graph size a batch of n sequences runs in (None: larger than every graph)."""
        return next((s for s in self.sizes if s >= n), None)

    def _batch(self, size: int) -> BatchInfo:
        """The step description the graph of `size` sees: its tensors are views of the static inputs. Its host
        lists are placeholders: nothing on the captured (Triton, decode) path reads them. Built once, outside
        the capture (building one copies host lists to the device, which a capture forbids)."""
        if size not in self.batches:
            batch = BatchInfo([self.dummy] * size, [1] * size, [1] * size, device=self.store.device,
                              graph_static=True)
            batch.positions = self.inputs[1, :size]
            batch.slots_t = self.inputs[2, :size]
            self.batches[size] = batch
        return self.batches[size]

    def _run(self, size: int) -> torch.Tensor:
        return self.model.run_layers(self.inputs[0, :size], self._batch(size), self.store, self.inputs[3, :size])

    def _capture(self, size: int) -> None:
        self._fill_padding(0, size)
        self._batch(size)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compiles the Triton kernels and settles the allocator outside the graph
                self._run(size)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.outputs[size] = self._run(size)
        self.pool = graph.pool()
        self.graphs[size] = graph

    def _fill_padding(self, n: int, size: int) -> None:
        pad = self.inputs[:, n:size]
        pad[:3] = torch.tensor([0, 0, self.dummy], device=pad.device)[:, None]  # token 0 at position 0, dummy
        pad[3] = self.dummy_pos

    def _ensure_graph(self, size: int) -> None:
        if self.capture and size not in self.graphs:
            try:
                self._capture(size)  # before a step's inputs are written: capture runs on padding only
            except RuntimeError as e:  # torch.AcceleratorError is a RuntimeError
                # An op on this model's path syncs with the host (e.g. a torch-reference fallback for shapes
                # the Triton kernels do not take): keep the same padded step, eagerly, from now on.
                warnings.warn(f"CUDA-graph capture failed, decoding eagerly instead: {e}", RuntimeWarning)
                self.capture = False
                self.graphs.clear()

    @torch.no_grad()
    def capture_all(self) -> None:
        """Captures every size's graph now (the engine does at start, as vLLM does), so that no request waits
        for a capture — or for a first-time kernel compile of a decode batch shape — later."""
        for size in self.sizes:
            self._ensure_graph(size)

    @torch.no_grad()
    def run(self, tokens: torch.Tensor, batch: BatchInfo, logits_index: torch.Tensor | None = None
            ) -> torch.Tensor | None:
        """One decode step (batch.is_decode; tokens [n]) through a graph: reserves the KV blocks, replays and
        commits, like model.forward_step. Returns float32 logits [n or len(logits_index), vocab], or None (and
        does nothing) when the batch is not a decode step, too large for the graphs, or the kernels run on the
        torch references (whose softmax layer reads the batch's host lists, which the graphs do not update)."""
        n = len(batch.slots)
        size = self.size_for(n)
        if size is None or not batch.is_decode or not kernels.use_triton(self.store.device):
            return None
        self._ensure_graph(size)
        kv_pos = self.store.prepare(batch)
        self.inputs[0, :n] = tokens
        self.inputs[1, :n] = batch.positions
        self.inputs[2, :n] = batch.slots_t
        self.inputs[3, :n] = kv_pos
        self._fill_padding(n, size)
        if self.capture:
            self.graphs[size].replay()
            logits = self.outputs[size]
        else:
            logits = self._run(size)
        self.store.commit(batch)
        # Copies: the next replay overwrites the graph's output buffer.
        return logits[:n].clone() if logits_index is None else logits[logits_index]
