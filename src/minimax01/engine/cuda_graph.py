"""CUDA graphs for pure-decode steps.

A decode step of a small batch is launch-bound: hundreds of small kernels for ~0.3 ms of memory traffic per
layer. `DecodeGraphRunner` is a StepModel (engine/protocol.py) that wraps the model: it captures
`model.run_layers` once per batch size of `SIZES` and replays it for the decode steps of the store it made; a
batch of n sequences runs in the graph of the next size up, the extra rows padded with a dummy slot the runner
owns (its lightning state and its one KV block absorb the padding rows' writes; their logits are dropped). Every
other step (prefill or mixed, more sequences than the largest graph, another store, kernels on the torch
references) goes to `model.step`, so a caller never chooses between graph and eager.

What makes the step capturable: the store's bookkeeping (`StateStore.advance`: block reservation, host lists)
stays outside the graph; the graph reads this step's tokens, positions, slots and KV write positions from
static device buffers filled before each replay, and every kernel on the decode path takes its sequence
lengths and block tables from device tensors (kernels.paged_decode_attention, lightning_decode, moe_experts).
The store's tensors must not be reallocated after capture: the runner makes a store with a fixed KV budget and
reserves the device block table's full width up front.

The runner's slot and block allocation is deterministic, so under tensor parallelism every rank wraps its shard
in an identical runner below the lock-step wrapper (parallel/world.py): each builds the same dummy in its
mirrored store, captures the same graphs when the store is made, and replays the same graph sizes on the same
steps, with the NCCL all-reduces of the sharded layers captured inside the graphs.

On by default on CUDA; `MINIMAX01_CUDA_GRAPHS=0` (or `LLMEngine(cuda_graphs=False)`) turns them off. Validated
on an H100: the GPU tests capture fp32 and bf16 models and match eager decoding, and greedy CLI text is
identical with and without graphs (bench/results/decode-step-*.md for the speed).
"""

from __future__ import annotations

import os
import warnings

import torch

import minimax01.kernels as kernels
from minimax01.cache import BatchInfo, StateLayout, StateStore
from minimax01.config import MiniMaxConfig
from minimax01.engine.protocol import StepModel
from minimax01.model.model import MiniMaxLM

SIZES = (1, 2, 4, 8, 16, 32, 64)


def graphs_enabled(model: StepModel, flag: bool | None = None) -> bool:
    """Whether the engine wraps `model` in a DecodeGraphRunner: `flag` when given, else on for CUDA with the
    Triton kernels unless MINIMAX01_CUDA_GRAPHS=0 (the torch reference path of the softmax layer is not
    capturable). Only a plain MiniMaxLM can be wrapped: a graph captures its `run_layers`, and a wrapper such as
    parallel.LockstepModel must see every step (parallel/world.py puts the runner below it, on every rank). A
    capture that fails anyway falls back to eager decoding with a RuntimeWarning."""
    plain = isinstance(model, MiniMaxLM)
    if flag and not plain:
        raise ValueError(f"CUDA-graph decode needs a MiniMaxLM, not a {type(model).__name__}")
    if flag is not None:
        return flag
    return (plain and model.device.type == "cuda" and os.environ.get("MINIMAX01_CUDA_GRAPHS", "1") != "0"
            and kernels.decode_graph_capturable(model.device, model.dtype))


class DecodeGraphRunner(StepModel):
    """Replays captured decode steps of `model` over the store of its last `new_store` call, for batches of up to
    max(sizes) sequences; a StepModel like the model it wraps.

    `max_model_len` bounds a sequence's length (the device block table is reserved that wide before capture;
    None: as long as the store's whole KV pool). With `capture_at_start`, `new_store` captures every graph size
    at once (as vLLM does at start), so that no request waits for a capture — or a first-time kernel compile of
    a decode batch shape — later; the ranks of a sharded model all create their store on the same message, so
    they capture the same graphs in the same order (their NCCL all-reduces pair up in the warm-up runs).
    Otherwise a size is captured on its first decode step (the same step on every rank). `capture=False`
    (default off CUDA) runs the same static-buffer step eagerly instead of replaying (CPU tests of the padding
    logic)."""

    def __init__(self, model: MiniMaxLM, max_model_len: int | None = None, sizes: tuple[int, ...] = SIZES,
                 capture: bool | None = None, capture_at_start: bool = False) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.max_size = max(sizes)
        self.requested_sizes = sizes
        self.capture = model.device.type == "cuda" if capture is None else capture
        self.capture_at_start = capture_at_start
        # Set by new_store: the store the graphs replay over, its padding slot and that slot's KV position, the
        # graph sizes the store's slots allow, and the static inputs of every graph (tokens, positions, slots, KV
        # write positions: [4, max size], views per size).
        self.store: StateStore | None = None
        self.dummy = self.dummy_pos = 0
        self.sizes: tuple[int, ...] = ()
        self.inputs = torch.zeros(4, 0, dtype=torch.long)
        self.batches: dict[int, BatchInfo] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None  # one memory pool shared by all graphs (they never run at the same time)
        self.num_replays = 0  # decode steps served by a graph replay (benchmarks and tests check it)

    # ------------------------------------------------------------------ StepModel
    @property
    def config(self) -> MiniMaxConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def state_layout(self) -> StateLayout:
        return self.model.state_layout

    def new_store(self, max_seqs: int, num_kv_blocks: int | None = None, kv_block_size: int = 64) -> StateStore:
        """The model's store for `max_seqs` sequences plus one slot and one KV block that the runner keeps for
        its padding dummy; the graphs replay over this store from now on (the previous store's are dropped)."""
        if num_kv_blocks is None:
            raise ValueError("CUDA-graph decode needs a fixed KV budget (the pool must not be reallocated)")
        cap = min(max_seqs, self.max_size)  # the largest batch the store's other slots can hold
        if cap < 1:
            raise ValueError("CUDA-graph decode needs a store of at least one sequence")
        self.release()
        store = self.model.new_store(max_seqs + 1, num_kv_blocks + 1, kv_block_size)
        store.reserve_block_table(-(-self.max_model_len // kv_block_size) if self.max_model_len else num_kv_blocks)
        self.store = store
        self.sizes = tuple(sorted({s for s in self.requested_sizes if s < cap} | {cap}))
        self.dummy = store.allocate()
        init = BatchInfo([self.dummy], [0], [1], device=store.device)
        with store.advance(init) as pos:  # the dummy's one KV position (none without softmax layers)
            self.dummy_pos = int(pos[0]) if pos.numel() else 0  # padding rows write their K/V there
        self.inputs = torch.zeros(4, self.sizes[-1], dtype=torch.long, device=store.device)
        if self.capture_at_start:
            self.capture_all()
        return store

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, batch: BatchInfo, store: StateStore,
             logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """A graph replay for a decode step of the runner's store that a graph covers, else `model.step`."""
        logits = self.replay(tokens, batch, logits_index) if store is self.store else None
        return logits if logits is not None else self.model.step(tokens, batch, store, logits_index)

    def release(self) -> None:
        """Drops the graphs, their memory pool and the store. Under tensor parallelism this must happen before the
        NCCL process group is destroyed: graphs that still hold captured collectives make
        `destroy_process_group` wait forever (seen on 2 GPUs)."""
        if self.graphs and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.store = None
        self.batches, self.graphs, self.outputs, self.pool = {}, {}, {}, None

    # ------------------------------------------------------------------ graphs
    def size_for(self, n: int) -> int | None:
        """The graph size a batch of n sequences runs in (None: larger than every graph)."""
        return next((s for s in self.sizes if s >= n), None)

    @torch.no_grad()
    def capture_all(self) -> None:
        """Captures every size's graph of the current store (a no-op where graphs are not captured)."""
        for size in self.sizes:
            self._ensure_graph(size)

    @torch.no_grad()
    def replay(self, tokens: torch.Tensor, batch: BatchInfo, logits_index: torch.Tensor | None = None
               ) -> torch.Tensor | None:
        """One decode step (batch.is_decode; tokens [n]) of the runner's store through a graph, with the store's
        bookkeeping around it. Returns float32 logits [n or len(logits_index), vocab], or None (and does
        nothing) when the batch is not a decode step, too large for the graphs, or the kernels run on the torch
        references (whose softmax layer reads the batch's host lists, which the graphs do not update)."""
        n = len(batch.slots)
        size = self.size_for(n)
        if (self.store is None or size is None or not batch.is_decode
                or not kernels.decode_graph_capturable(self.store.device, self.model.dtype)):
            return None
        self._ensure_graph(size)  # before this step's inputs are written: a capture runs on padding only
        with self.store.advance(batch) as kv_pos:
            self.inputs[0, :n] = tokens
            self.inputs[1, :n] = batch.positions
            self.inputs[2, :n] = batch.slots_t
            self.inputs[3, :n] = kv_pos
            self._fill_padding(n, size)
            if self.capture:
                self.graphs[size].replay()
                self.num_replays += 1
                logits = self.outputs[size]
            else:
                logits = self._run(size)
        # Copies: the next replay overwrites the graph's output buffer.
        return logits[:n].clone() if logits_index is None else logits[logits_index]

    def _batch(self, size: int) -> BatchInfo:
        """The step description the graph of `size` sees: its tensors are views of the static inputs. Its host
        lists are placeholders: nothing on the captured (Triton, decode) path reads them. Built once, outside
        the capture (building one copies host lists to the device, which a capture forbids)."""
        if size not in self.batches:
            batch = BatchInfo([self.dummy] * size, [1] * size, [1] * size, device=self.store.device,
                              max_seq_len=None)
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
                self._capture(size)
            except RuntimeError as e:  # torch.AcceleratorError is a RuntimeError
                # An op on this model's path syncs with the host (e.g. a torch-reference fallback for shapes
                # the Triton kernels do not take): keep the same padded step, eagerly, from now on.
                warnings.warn(f"CUDA-graph capture failed, decoding eagerly instead: {e}", RuntimeWarning)
                self.capture = False
                self.graphs.clear()
