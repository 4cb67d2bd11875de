"""LLMEngine: the synchronous continuous-batching core. The HTTP server and `generation.generate()` both drive
this one loop: `add_request` / `abort` queue work, each `step()` runs ONE model call over a flattened batch
(decode tokens and prefill chunks mixed, see scheduler.py), samples, detokenizes and checks stops.

Thread-safety: the public methods take one lock, so a server may call `add_request` / `abort` from its
request handlers while a single loop thread calls `step()`; a step is never interleaved with another call.
"""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING, Any

import torch

from minimax01.cache import BatchInfo
from minimax01.config import MiniMaxConfig
from minimax01.engine.cuda_graph import DecodeGraphRunner, graphs_enabled
from minimax01.engine.kv_budget import kv_budget, positive
from minimax01.engine.outputs import EngineStats, RequestOutput
from minimax01.engine.prefix_cache import new_prefix_cache
from minimax01.engine.prompt_logprobs import score_rows, scored_positions
from minimax01.engine.protocol import StepModel
from minimax01.engine.scheduler import Request, ScheduledChunk, Scheduler
from minimax01.errors import RequestError
from minimax01.sampling import Sampler, make_generator
from minimax01.sampling_params import SamplingParams
from minimax01.stop_strings import StopChecker
from minimax01.special_tokens import DEFAULT_EOS_TOKEN_ID
from minimax01.structured import GrammarMatcher, GrammarVocabulary, fill_bitmasks

if TYPE_CHECKING:
    from minimax01.tokenizer import MiniMaxTokenizer

# The per-request guard's message: NaN/inf logits come from corrupt weights or a numerical fault, not from the
# request, and sampling from them would return garbage (NaN probabilities pick token 0 every time).
NON_FINITE_LOGITS = "the model produced non-finite logits (NaN or inf) for this request"


def default_stop_ids(config: MiniMaxConfig, tokenizer: MiniMaxTokenizer | None = None) -> list[int]:
    """The tokenizer's EOS, else config.eos_token_id, else 200020 (`<end_of_sentence>`) if the vocab has it."""
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return [tokenizer.eos_token_id]
    if config.eos_token_id is not None:
        eos = config.eos_token_id
        return list(eos) if isinstance(eos, list) else [eos]
    return [DEFAULT_EOS_TOKEN_ID] if config.vocab_size > DEFAULT_EOS_TOKEN_ID else []


class LLMEngine:
    """Continuous batching over one StateStore of `max_num_seqs` slots.

    Args:
        model: the model (engine/protocol.py: config, device, dtype, state layout, stores and steps).
        tokenizer: needed for text output and stop strings; without it `new_text` is always "".
        max_num_seqs: sequences decoded together (StateStore slots: one fp32 lightning state each).
        max_model_len: prompt + generated tokens per request; default min(max_position_embeddings,
            tokens of the KV pool if one is given, else 32768).
        max_num_batched_tokens: tokens per step (decodes + prefill chunks); longer prompts are chunked.
        kv_block_size: tokens per KV-cache page.
        num_kv_blocks: KV pages in the pool; default from `kv_cache_bytes`, else enough for every slot to
            hold `max_model_len` tokens.
        kv_cache_bytes: memory budget of the softmax-layer KV cache (used when num_kv_blocks is None).
        default_stop_token_ids: ids that end every request unless `ignore_eos`; default: see
            `default_stop_ids()`. A request's own `stop_token_ids` always apply.
        cuda_graphs: wrap the model in a DecodeGraphRunner, which replays pure-decode steps from CUDA graphs
            (engine/cuda_graph.py); default: on for CUDA with the Triton kernels unless MINIMAX01_CUDA_GRAPHS=0.
        prefix_caching: reuse cached prompt prefixes (engine/prefix_cache.py); for a sharded model too, whose
            follower ranks replay the cache's operations on their own shards (parallel/mirror.py).
        prefix_snapshot_interval: tokens between lightning-state snapshots (a multiple of lcm(256, page)).
        prefix_cache_bytes: memory of the lightning-state snapshots on the model's device.
        prefix_cache_host_bytes: host memory that snapshots are spilled to when the device budget is full.
    """

    def __init__(
        self,
        model: StepModel,
        tokenizer: MiniMaxTokenizer | None = None,
        max_num_seqs: int = 8,
        max_model_len: int | None = None,
        max_num_batched_tokens: int = 512,
        kv_block_size: int = 64,
        num_kv_blocks: int | None = None,
        kv_cache_bytes: int | None = None,
        default_stop_token_ids: list[int] | None = None,
        cuda_graphs: bool | None = None,
        prefix_caching: bool = True,
        prefix_snapshot_interval: int | None = None,
        prefix_cache_bytes: int | None = None,
        prefix_cache_host_bytes: int = 0,
    ) -> None:
        config = model.config
        self.tokenizer = tokenizer
        self.config = config
        self.max_num_seqs = positive("max_num_seqs", max_num_seqs)
        self.max_num_batched_tokens = positive("max_num_batched_tokens", max_num_batched_tokens)
        self.kv_block_size = positive("kv_block_size", kv_block_size)
        # Keys + values of every softmax layer, with the heads this rank holds (tensor parallel: its share).
        block_bytes = kv_block_size * model.state_layout.kv_bytes_per_token(config, model.dtype)
        num_kv_blocks, self.max_model_len = kv_budget(config, block_bytes, max_num_seqs, kv_block_size,
                                                      max_model_len, num_kv_blocks, kv_cache_bytes)
        # The StepModel the engine runs: the model itself, or the CUDA-graph runner around it.
        self.graphs = (DecodeGraphRunner(model, self.max_model_len, capture_at_start=True)
                       if graphs_enabled(model, cuda_graphs) else None)
        self.model: StepModel = self.graphs if self.graphs is not None else model
        # A graph runner captures every graph size here (a no-op off CUDA), before the first request.
        self.store = self.model.new_store(max_num_seqs, num_kv_blocks=num_kv_blocks, kv_block_size=kv_block_size)
        self.prefix_cache = (new_prefix_cache(self.store, config, model.dtype, prefix_snapshot_interval,
                                              prefix_cache_bytes, prefix_cache_host_bytes)
                             if prefix_caching else None)
        self.scheduler = Scheduler(self.store, max_num_batched_tokens, self.prefix_cache)
        self.sampler = Sampler()
        self.default_stop_token_ids = (list(default_stop_token_ids) if default_stop_token_ids is not None
                                       else default_stop_ids(config, tokenizer))
        self._requests: dict[str, Request] = {}  # unfinished requests by id
        self._pending: list[RequestOutput] = []  # outputs produced outside step() (abort, errors)
        self._lock = threading.RLock()
        self._totals = {"prompt": 0, "generated": 0, "finished": 0}
        self._last_step = (0, 0)  # (sequences, tokens) of the last model call
        # The vocabulary grammars are matched against, built here because reading 200 K token strings takes 2-3 s
        # on a CPU, which the first structured request would otherwise stall every stream for.
        self._grammar_vocab = (GrammarVocabulary(tokenizer, config.vocab_size, self.default_stop_token_ids)
                               if tokenizer is not None and self.default_stop_token_ids else None)

    # ------------------------------------------------------------------ requests
    def add_request(self, prompt_ids: list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        """Queues a request; returns its id. Raises RequestError naming the field at fault."""
        params = params if params is not None else SamplingParams()
        params.validate()
        prompt = self._check_prompt(prompt_ids)
        total = len(prompt) + params.max_new_tokens
        if len(prompt) >= self.max_model_len:
            raise RequestError(f"prompt has {len(prompt)} tokens; max_model_len is {self.max_model_len}, which "
                               f"leaves no room for a generated token")
        if total > self.max_model_len:
            raise RequestError(f"max_new_tokens={params.max_new_tokens} with a {len(prompt)}-token prompt exceeds "
                               f"max_model_len={self.max_model_len}; use at most "
                               f"{self.max_model_len - len(prompt)}")
        if self.scheduler.blocks_for(total) > self.store.num_kv_blocks:
            raise RequestError(f"prompt + max_new_tokens = {total} tokens needs more KV cache than the engine has "
                               f"({self.store.num_kv_blocks} blocks of {self.kv_block_size}); lower max_new_tokens")
        if params.stop and self.tokenizer is None:
            raise RequestError("stop strings need a tokenizer; the engine has none (use stop_token_ids)")
        grammar = None
        if params.grammar is not None:
            if self._grammar_vocab is None:
                raise RequestError("structured outputs need a tokenizer and a stop token; the engine has none")
            grammar = GrammarMatcher(self._grammar_vocab, params.grammar)
        with self._lock:
            if request_id is None:
                request_id = uuid.uuid4().hex
            elif not isinstance(request_id, str) or not request_id:
                raise RequestError(f"request_id must be a non-empty string, got {request_id!r}")
            if request_id in self._requests:
                raise RequestError(f"request_id {request_id!r} is already in use")
            stop_ids = set(params.stop_token_ids)
            if not params.ignore_eos:
                stop_ids.update(self.default_stop_token_ids)
            req = Request(
                request_id=request_id,
                all_ids=prompt,
                prompt_len=len(prompt),
                params=params,
                generator=make_generator(params.seed, self.model.device),
                stop_ids=frozenset(stop_ids),
                decoder=(self.tokenizer.incremental_decoder(params.skip_special_tokens,
                                                            params.spaces_between_special_tokens)
                         if self.tokenizer is not None else None),
                stop_checker=StopChecker(list(params.stop)),
                prompt_scores=[] if params.prompt_logprobs is not None else None,
                grammar=grammar,
            )
            self._requests[request_id] = req
            self.scheduler.add(req)
            return request_id

    def _check_prompt(self, prompt_ids: Any) -> list[int]:
        if isinstance(prompt_ids, torch.Tensor):
            prompt_ids = prompt_ids.tolist()
        if not isinstance(prompt_ids, (list, tuple)) or not prompt_ids:
            raise RequestError("prompt must be a non-empty list of token ids")
        vocab = self.config.vocab_size
        for i, t in enumerate(prompt_ids):
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
                raise RequestError(f"prompt token {i} is {t!r}; token ids must be integers in [0, {vocab})")
        return list(prompt_ids)

    def abort(self, request_id: str) -> bool:
        """Cancels a request: its slot and KV blocks are free at once; the next `step()` returns its final
        output (finish_reason "abort"). False if the id is unknown or already finished."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is None:
                return False
            req.finish_reason = "abort"
            self._pending.append(self._output(req, [], "", None, None))
            self._finish(req)
            return True

    def has_unfinished(self) -> bool:
        """True while a request is queued or running, or an output is still to be returned by step()."""
        with self._lock:
            return bool(self._requests or self._pending)

    def stats(self) -> EngineStats:
        with self._lock:
            cache = self.prefix_cache
            # Blocks that only the prefix cache holds are free for the taking: they count as free.
            free = self.store.num_free_blocks + (cache.num_reclaimable_blocks() if cache else 0)
            return EngineStats(
                running=len(self.scheduler.running),
                waiting=len(self.scheduler.waiting),
                free_slots=self.store.num_free_slots,
                used_kv_blocks=self.store.num_kv_blocks - free,
                free_kv_blocks=free,
                total_kv_blocks=self.store.num_kv_blocks,
                prompt_tokens_total=self._totals["prompt"],
                generation_tokens_total=self._totals["generated"],
                finished_requests_total=self._totals["finished"],
                preemptions_total=self.scheduler.num_preemptions,
                last_step_num_seqs=self._last_step[0],
                last_step_num_tokens=self._last_step[1],
                prefix_cache=cache.stats() if cache else None,
            )

    # ------------------------------------------------------------------ the loop
    def step(self) -> list[RequestOutput]:
        """One scheduling + model iteration. Returns the outputs of every request that produced a token or
        finished (requests in the middle of a chunked prefill produce nothing)."""
        with self._lock:
            outputs, self._pending = self._pending, []
            sched = self.scheduler.schedule()
            self._last_step = (len(sched.chunks), sched.num_tokens)
            if not sched.chunks:
                return outputs
            # Rows of the model call: the sampling row of each chunk that samples, then the rows scoring prompt
            # tokens of the chunks whose requests ask for prompt logprobs.
            sampling = [c for c in sched.chunks if c.samples and c.request.params.max_new_tokens > 0]
            scoring = [(c, scored_positions(c.request.prompt_len, len(c.request.prompt_scores), c.start, c.num_new))
                       for c in sched.chunks if c.request.prompt_scores is not None]
            try:
                logits = self._run_model(sched.chunks, sampling, scoring)  # float32 [rows, vocab]
            except Exception:
                self._pending = outputs + self._pending  # nothing produced so far is lost
                raise
            for c in sched.chunks:
                c.request.num_computed += c.num_new
                if c.samples and not c.request.prompt_counted:
                    c.request.prompt_counted = True
                    self._totals["prompt"] += c.request.prompt_len
            self.scheduler.cache_prefixes(sched.chunks)
            self._score_prompts(logits[len(sampling):], scoring, outputs)
            for c in sched.chunks:
                if c.samples and c.request.params.max_new_tokens == 0 and c.request.finish_reason is None:
                    c.request.finish_reason = "length"  # the prompt was only to be scored
                    outputs.append(self._output(c.request, [], "", None, None))
                    self._finish(c.request)
            if sampling:
                keep = [i for i, c in enumerate(sampling) if c.request.finish_reason is None]  # not failed scoring
                logits = logits[:len(sampling)] if len(keep) == len(sampling) else logits[keep]
                reqs = [sampling[i].request for i in keep]
                # A row holding a NaN or inf is sampled as zeros and its request failed below: no host sync
                # before the sampler, so building the grammar masks overlaps the model's GPU work.
                finite = torch.isfinite(logits).all(dim=1)  # [rows] bool, on the device
                logits.masked_fill_(~finite[:, None], 0.0)
            if sampling and reqs:
                # Rows with a grammar are masked; a row whose matcher failed (no token allowed) is sampled with the
                # others (rows are independent) and its request failed below.
                masked, bitmask, failed = fill_bitmasks(self._grammar_vocab, [r.grammar for r in reqs])
                out = self.sampler.sample(logits, [r.params for r in reqs], [r.generator for r in reqs],
                                          [r.all_ids for r in reqs], [r.prompt_len for r in reqs], masked, bitmask)
                tokens, lps, ok = out.tokens.tolist(), out.logprobs.tolist(), finite.tolist()
                for i, req in enumerate(reqs):
                    if not ok[i]:
                        self._fail(req, outputs, NON_FINITE_LOGITS)
                        continue
                    if req.grammar is not None and (i in failed or not req.grammar.accept(tokens[i])):
                        self._fail(req, outputs, f"the output grammar failed: {req.grammar.error}")
                        continue
                    outputs.append(self._append_token(req, tokens[i], lps[i], out.top_logprobs[i]))
            return outputs

    def _score_prompts(self, logits: torch.Tensor, scoring: list[tuple[ScheduledChunk, range]],
                       outputs: list[RequestOutput]) -> None:
        """Appends each scoring chunk's prompt-token scores (its rows of `logits`, in `scoring` order); fails the
        request, as sampling would, when its rows are not finite (a NaN score cannot be sent as JSON)."""
        row = 0
        for c, positions in scoring:
            req, rows = c.request, logits[row:row + len(positions)]
            row += len(positions)
            if not bool(torch.isfinite(rows).all()):
                self._fail(req, outputs, NON_FINITE_LOGITS)
                continue
            targets = [req.all_ids[q + 1] for q in positions]
            req.prompt_scores.extend(score_rows(rows, targets, req.params.prompt_logprobs))

    def _run_model(self, chunks: list[ScheduledChunk], sampling: list[ScheduledChunk],
                   scoring: list[tuple[ScheduledChunk, range]]) -> torch.Tensor:
        """One model call; logits rows: the last token of each `sampling` chunk, then each scoring chunk's
        positions."""
        device = self.model.device
        tokens: list[int] = []
        first_row: dict[int, int] = {}  # id(chunk) -> its first token's row in the flattened batch
        for c in chunks:
            first_row[id(c)] = len(tokens)
            tokens.extend(c.request.all_ids[c.start:c.start + c.num_new])
        batch = BatchInfo([c.request.slot for c in chunks], [c.start for c in chunks],
                          [c.num_new for c in chunks], device=device)
        rows = [first_row[id(c)] + c.num_new - 1 for c in sampling] + [
            first_row[id(c)] + q - c.start for c, positions in scoring for q in positions]
        try:
            tokens_t = torch.tensor(tokens, dtype=torch.long, device=device)
            rows_t = torch.tensor(rows, dtype=torch.long, device=device)
            return self.model.step(tokens_t, batch, self.store, logits_index=rows_t)
        except Exception:
            # The step may have half-updated these slots' states in place: they cannot continue. Fail them
            # (their final outputs come with the next step) and let the caller see the error.
            for c in chunks:
                self._fail(c.request, self._pending)
            raise

    def _fail(self, req: Request, outputs: list[RequestOutput], error: str | None = None) -> None:
        """Ends `req` with finish_reason "error" (its final output goes to `outputs`) and frees its slot."""
        req.finish_reason = "error"
        outputs.append(self._output(req, [], "", None, None, error=error))
        self._finish(req)

    def _append_token(self, req: Request, token: int, logprob: float,
                      top: list[tuple[int, float]] | None) -> RequestOutput:
        req.all_ids.append(token)
        self._totals["generated"] += 1
        text = ""
        # A grammar ends on an EOS even under ignore_eos (its vocabulary's stop ids), which then is no text either.
        grammar_eos = req.grammar is not None and req.grammar.finished and token in self.default_stop_token_ids
        if token in req.stop_ids or grammar_eos:
            req.finish_reason, req.stop_reason = "stop", token  # the stop token's own text is not shown
        elif req.decoder is not None:
            text, hit = req.stop_checker.update(req.decoder.step(token))
            if hit:
                req.finish_reason, req.stop_reason = "stop", req.stop_checker.matched
        if req.finish_reason is None and req.grammar is not None and req.grammar.finished:
            req.finish_reason = "stop"  # the grammar allows nothing more after this token
        if req.finish_reason is None and req.num_generated >= req.params.max_new_tokens:
            req.finish_reason = "length"
        if req.finish_reason is not None and req.decoder is not None and not req.stop_checker.stopped:
            # End of stream: release what the decoder and the stop checker held back. A stop string can
            # still complete inside that tail.
            tail, hit = req.stop_checker.update(req.decoder.flush())
            text += tail + req.stop_checker.flush()
            if hit:
                req.finish_reason, req.stop_reason = "stop", req.stop_checker.matched
        want_lp = req.params.logprobs is not None
        output = self._output(req, [token], text, [logprob] if want_lp else None, [top or []] if want_lp else None)
        if req.finish_reason is not None:
            self._finish(req)
        return output

    def _output(self, req: Request, tokens: list[int], text: str, logprobs: list[float] | None,
                top: list[list[tuple[int, float]]] | None, error: str | None = None) -> RequestOutput:
        prompt_scores = None
        if req.prompt_scores is not None and not req.prompt_scores_sent and req.prompt_counted:
            prompt_scores, req.prompt_scores_sent = req.prompt_scores, True
        return RequestOutput(
            request_id=req.request_id,
            new_token_ids=tokens,
            new_text=text,
            finished=req.finish_reason is not None,
            finish_reason=req.finish_reason,
            prompt_tokens=req.prompt_len,
            completion_tokens=req.num_generated,
            logprobs=logprobs,
            top_logprobs=top,
            stop_reason=req.stop_reason,
            error=error,
            prompt_logprobs=prompt_scores,
            cached_tokens=req.cached_tokens,
        )

    def _finish(self, req: Request) -> None:
        self.scheduler.remove(req)
        del self._requests[req.request_id]
        self._totals["finished"] += 1
