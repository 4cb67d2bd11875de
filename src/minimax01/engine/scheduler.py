"""Continuous-batching scheduler: which requests run in the next step, and with how many tokens.

Every request is one growing token list `all_ids` (prompt, then generated tokens) of which the first
`num_computed` are in its StateStore slot. A step computes `all_ids[num_computed:]`, cut to the token budget:
that is a prefill chunk, a whole prompt, or the single last sampled token of a decoding request. The same rule
re-prefills a preempted request (prompt + everything it generated), so preemption needs no special path.

Policy per step, under `max_num_batched_tokens`:
1. decodes of running requests (one token each), oldest first, so that streams keep flowing while long
   prompts are being prefilled;
2. prefill chunks of running requests whose prompt is not fully in the cache yet;
3. admission of waiting requests (first come, first served) while a slot, token budget and KV blocks are free.
KV blocks are reserved for the step before the model runs; when a running request cannot get its blocks the
most recently admitted unscheduled request is preempted (slot and blocks freed, put back at the head of the
queue, recomputed later), which always lets the oldest requests finish: the engine waits, it never runs out.

With a PrefixCache (prefix_cache.py): an admitted request starts from the longest cached prefix of its tokens
(shared KV blocks + lightning snapshot), prefill chunks end where the cache needs them to (`chunk_end`), blocks
that only the cache holds are evicted before anyone is preempted, and a request whose next snapshot another
running request is computing waits for it (a bounded wait: that request advances every step).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from minimax01.cache import StateStore
from minimax01.engine.prefix_cache import NO_HIT, PrefixCache, PrefixHit
from minimax01.engine.prompt_logprobs import PromptLogprob
from minimax01.sampling_params import SamplingParams
from minimax01.stop_strings import StopChecker

if TYPE_CHECKING:
    from minimax01.structured import GrammarMatcher
    from minimax01.tokenizer import IncrementalDecoder


@dataclass(eq=False)
class Request:
    """One generation request and its progress. Owned by the engine; read-only for everyone else."""

    request_id: str
    all_ids: list[int]  # prompt, then generated tokens
    prompt_len: int
    params: SamplingParams
    generator: torch.Generator | None  # per-request RNG (None: the engine's shared one)
    stop_ids: frozenset[int]  # token ids that end the request
    decoder: IncrementalDecoder | None  # streaming detokenizer (None without a tokenizer)
    stop_checker: StopChecker
    slot: int | None = None  # StateStore slot while running
    num_computed: int = 0  # leading tokens of all_ids held in the slot's state / KV cache
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # matched stop string or stop token id
    num_preemptions: int = 0
    prompt_counted: bool = field(default=False, repr=False)  # prompt tokens added to the engine totals
    # Scores of prompt tokens 1.. so far, when params.prompt_logprobs asks for them (else None); sent once.
    prompt_scores: list[PromptLogprob] | None = field(default=None, repr=False)
    prompt_scores_sent: bool = field(default=False, repr=False)
    # Where the output is in params.grammar (None without one): masks the sampler's row, advances per token.
    grammar: GrammarMatcher | None = field(default=None, repr=False)
    cached_tokens: int = 0  # prompt tokens served from the prefix cache at the first admission
    prefill_len: int = 0  # len(all_ids) at the last admission: the tokens computed by prefill chunks
    prefix_keys: list[bytes] = field(default_factory=list, repr=False)  # block keys of all_ids (prefix cache)
    claimed: list[bytes] = field(default_factory=list, repr=False)  # snapshot keys it is computing

    @property
    def output_ids(self) -> list[int]:
        return self.all_ids[self.prompt_len:]

    @property
    def num_generated(self) -> int:
        return len(self.all_ids) - self.prompt_len

    @property
    def num_pending(self) -> int:
        """Tokens of all_ids not yet in the cache."""
        return len(self.all_ids) - self.num_computed


@dataclass
class ScheduledChunk:
    request: Request
    start: int  # == request.num_computed when scheduled
    num_new: int

    @property
    def samples(self) -> bool:
        """This chunk reaches the end of all_ids, so its last logits give the next token."""
        return self.start + self.num_new == len(self.request.all_ids)


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk]
    preempted: list[Request]

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new for c in self.chunks)


class Scheduler:
    """Queues, slots and the per-step token / KV-block budget. Not thread-safe (the engine locks)."""

    def __init__(self, store: StateStore, max_num_batched_tokens: int, prefix: PrefixCache | None = None) -> None:
        self.store = store
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefix = prefix
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order: the last one is preempted first
        self.num_preemptions = 0

    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks that a sequence of `num_tokens` tokens occupies."""
        if not self.store.full_index:  # no softmax layer: no KV cache at all
            return 0
        return -(-num_tokens // self.store.kv_block_size)

    # ------------------------------------------------------------------ queue changes
    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def remove(self, request: Request) -> None:
        """Drops a finished or aborted request; its slot and KV blocks are free at once."""
        self._release_claims(request)
        if request.slot is not None:
            self.store.free(request.slot)
            request.slot = None
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)

    def _release_claims(self, request: Request) -> None:
        if self.prefix is not None:
            self.prefix.release(id(request), request.claimed)
            request.claimed = []

    def _preempt(self, request: Request) -> None:
        self._release_claims(request)
        self.store.free(request.slot)
        request.slot = None
        request.num_computed = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.running.remove(request)
        self.waiting.appendleft(request)

    def _next_token_blocks(self, chunks: list[ScheduledChunk]) -> int:
        """KV blocks the scheduled sequences need for one token beyond their chunks of this step (0 or 1 each)."""
        need = self.store.blocks_needed
        return sum(need(c.request.slot, c.num_new + 1) - need(c.request.slot, c.num_new) for c in chunks)

    def _chunk_size(self, req: Request, start: int, budget: int) -> int:
        """Tokens of `req` to compute from `start` in this step (budget > 0): all pending ones that fit, the chunk
        ending where the prefix cache needs it to (at least one token: see PrefixCache.chunk_end)."""
        n = min(len(req.all_ids) - start, budget)
        if self.prefix is None:
            return n
        return self.prefix.chunk_end(start, start + n, len(req.all_ids), req.prompt_len) - start

    def _short(self, need: int, reserved: int) -> bool:
        """Whether `need` more blocks are missing after evicting what the prefix cache alone holds."""
        missing = need - (self.store.num_free_blocks - reserved)
        if missing > 0 and self.prefix is not None:
            missing -= self.prefix.evict(missing)
        return missing > 0

    def cache_prefixes(self, chunks: list[ScheduledChunk]) -> None:
        """After a step: hands the prefixes that prefill chunks completed at a snapshot position to the cache."""
        if self.prefix is None:
            return
        for c in chunks:
            req, end = c.request, c.start + c.num_new
            if end <= req.prefill_len and req.slot is not None and self.prefix.is_snapshot_position(
                    end, req.prompt_len):
                self.prefix.record(req.slot, req.all_ids, req.prefix_keys, end)

    def _lookup(self, req: Request) -> PrefixHit | None:
        """`req`'s cached prefix (NO_HIT without a cache or when it asks for prompt logprobs, which need every
        prompt row computed), or None when it should wait for the snapshot another request is computing."""
        cache = self.prefix
        if cache is None or req.prompt_scores is not None:
            return NO_HIT
        hit = cache.lookup(req.all_ids, req.prefix_keys)
        nxt = cache.next_snapshot_key(req.all_ids, req.prefix_keys, hit.length, req.prompt_len)
        return None if cache.must_wait(id(req), nxt) else hit

    def _admit(self, req: Request, hit: PrefixHit, budget: int, reserved: int, ahead: int
               ) -> tuple[int, int, int] | None:
        """Gives `req` a slot, starting from `hit`; returns (chunk tokens, blocks reserved for it, one more token's
        blocks), or None (nothing changed) when the budget or the KV blocks do not allow it now."""
        n = self._chunk_size(req, hit.length, budget)
        need = self.blocks_for(hit.length + n) - len(hit.kv_blocks)
        own_next = self.blocks_for(hit.length + n + 1) - self.blocks_for(hit.length + n)
        slot = self.store.allocate()
        if hit.length:  # first, so that the shared blocks are held by the request and cannot be evicted below
            self.store.attach_prefix(slot, hit.length, hit.kv_blocks, hit.state, hit.key)
        if self._short(need + ahead + own_next, reserved):
            self.store.free(slot)
            return None
        req.slot, req.num_computed, req.prefill_len = slot, hit.length, len(req.all_ids)
        if self.prefix is not None:
            if req.num_preemptions == 0:
                req.cached_tokens = min(hit.length, req.prompt_len)
                self.prefix.count(hit)
            req.claimed = self.prefix.claim(id(req), req.all_ids, req.prefix_keys, hit.length, req.prompt_len)
        return n, need, own_next

    # ------------------------------------------------------------------ one step
    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        reserved = 0  # KV blocks promised to chunks of this step (StateStore.prepare takes them later)
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        scheduled: set[int] = set()  # id() of requests with a chunk in this step

        decoding = [r for r in self.running if r.num_pending == 1]
        prefilling = [r for r in self.running if r.num_pending > 1]
        for req in decoding + prefilling:
            if budget == 0:
                break
            if req.slot is None:  # preempted earlier in this loop
                continue
            n = self._chunk_size(req, req.num_computed, budget)
            need = self.store.blocks_needed(req.slot, n)
            while self._short(need, reserved):
                victim = next((r for r in reversed(self.running) if id(r) not in scheduled and r is not req), req)
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            if req.slot is None:
                continue
            chunks.append(ScheduledChunk(req, req.num_computed, n))
            scheduled.add(id(req))
            reserved += need
            budget -= n

        # No admission in a step that had to preempt: memory is short, and a just-preempted request would
        # otherwise be re-admitted at once only to be preempted again.
        # Admission keeps in hand the blocks that one more token of every scheduled sequence (the candidate
        # included) would take, so that their next decode step does not have to preempt the request admitted now
        # (thrashing). Counting exactly, not one block per sequence: a pool sized for max_num_seqs full-length
        # sequences must admit all of them.
        ahead = self._next_token_blocks(chunks) if self.waiting and not preempted else 0  # only admission uses it
        for req in list(self.waiting) if not preempted else []:
            if budget == 0 or self.store.num_free_slots == 0:
                break
            hit = self._lookup(req)
            if hit is None:
                continue  # waits for another request's snapshot; the requests behind it may still start
            admitted = self._admit(req, hit, budget, reserved, ahead)
            if admitted is None:
                break
            n, need, own_next = admitted
            self.waiting.remove(req)
            self.running.append(req)
            chunks.append(ScheduledChunk(req, req.num_computed, n))
            reserved += need
            ahead += own_next
            budget -= n
        return SchedulerOutput(chunks, preempted)
