"""AsyncEngine: the synchronous LLMEngine driven by ONE background thread, fed from asyncio.

The engine's `step()` blocks for a whole model forward, so it must not run on the event loop. The engine takes a
lock around each call, but one thread driving it keeps the order of commands and steps simple: every engine call
(add_request, abort, step, stats) happens on the engine thread; the event loop only puts commands into a
thread-safe deque and receives outputs through per-call asyncio queues (`loop.call_soon_threadsafe`). Between two steps the thread applies all pending commands, which is exactly where
continuous batching lets requests join and leave.

Cancellation: `Generation.abort()` (called when its iteration ends early, is cancelled, or explicitly by the
HTTP layer when a client disconnects) aborts every request of the call that has not finished; the engine frees
their slots and KV blocks at its next command drain, i.e. before the next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from minimax01.errors import MiniMaxError
from minimax01.sampling_params import SamplingParams
from minimax01.server.metrics import ServerMetrics

log = logging.getLogger("minimax01.server")


# What a client is told when a step fails: the exception text (a device error, a dead tensor-parallel rank's
# socket error with source paths) is for the operator, in the log next to the traceback.
STEP_FAILED = "the engine failed while running this request (the server log has the details)"


class EngineFailure(MiniMaxError, RuntimeError):
    """The engine raised while stepping; the requests in flight are failed, the server keeps serving."""


class EngineLike(Protocol):
    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> str: ...
    def abort(self, request_id: str) -> None: ...
    def step(self) -> list[Any]: ...
    def has_unfinished(self) -> bool: ...
    def stats(self) -> Any: ...

    max_num_seqs: int


@dataclass
class _Stream:
    """Routing and timing of one engine request; touched only by the engine thread."""

    queue: asyncio.Queue[Any]
    loop: asyncio.AbstractEventLoop
    index: int  # position in the submit() call that started it
    prompt_tokens: int
    t_submit: float
    t_last: float | None = None  # time of the last output with tokens
    completion_tokens: int = 0


@dataclass
class Submission:
    """One engine request of a submit() call."""

    prompt_ids: list[int]
    params: SamplingParams
    request_id: str


def engine_snapshot(engine: EngineLike) -> dict[str, float]:
    """The engine's stats() under the names the metrics use (metrics.ServerMetrics)."""
    st = engine.stats()
    return {
        "num_waiting": st.waiting,
        "num_running": st.running,
        "free_slots": st.free_slots,
        "num_slots": engine.max_num_seqs,
        "free_kv_blocks": st.free_kv_blocks,
        "num_kv_blocks": st.total_kv_blocks,
        "last_step_tokens": st.last_step_num_tokens,
        "preemptions": st.preemptions_total,
        **{f"prefix_cache_{k}": v for k, v in (asdict(st.prefix_cache) if st.prefix_cache else {}).items()},
    }


class Generation:
    """The outputs of one submit() call: iterate for `(index, RequestOutput)` until every request has finished.

    `abort()` cancels whatever has not finished (idempotent, callable from any code path: a finished
    iteration, an exception, a client disconnect); iteration calls it when it is closed early.
    """

    def __init__(self, runner: AsyncEngine, request_ids: list[str]) -> None:
        self._runner = runner
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.pending = set(request_ids)

    def abort(self) -> None:
        for request_id in self.pending:
            self._runner._send("abort", request_id)
        self.pending.clear()

    async def __aiter__(self) -> AsyncIterator[tuple[int, Any]]:
        try:
            while self.pending:
                item = await self.queue.get()
                if isinstance(item, BaseException):
                    raise item
                index, out = item
                if out.finished:
                    self.pending.discard(out.request_id)
                yield index, out
        finally:
            self.abort()


class AsyncEngine:
    """Runs `engine` on a daemon thread; `submit()` is the only way in for requests.

    Args:
        engine: an LLMEngine (or anything with its add_request/abort/step/has_unfinished/stats API).
    """

    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine
        self.metrics = ServerMetrics(self.stats)
        self._commands: deque[tuple[Any, ...]] = deque()  # deque append/popleft are thread-safe
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._stats: dict[str, float] = engine_snapshot(engine)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="minimax01-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ event-loop side
    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def stats(self) -> dict[str, float]:
        """The snapshot taken after the engine's last step or command (never blocks on the engine)."""
        return self._stats

    def fail_all(self, message: str) -> None:
        """Ends every request in flight with EngineFailure(message) (streams: an error event, then [DONE]),
        on the engine thread between two steps. Thread-safe; used at the shutdown deadline."""
        self._send("fail", message)

    def close(self, timeout: float = 5.0) -> None:
        """Stops the engine thread after its current step."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)

    def _send(self, *command: Any) -> None:
        self._commands.append(command)
        self._wake.set()

    async def submit(self, submissions: Sequence[Submission]) -> Generation:
        """Adds every submission to the engine (between two steps) and returns their Generation.

        Raises the first add_request error (a RequestError: bad prompt or parameters); the submissions that
        were added are then aborted, as they are if this call is cancelled.
        """
        if not self.alive:
            raise EngineFailure("the engine thread is not running")
        loop = asyncio.get_running_loop()
        generation = Generation(self, [s.request_id for s in submissions])
        futures = []
        for i, s in enumerate(submissions):
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._send("add", s, generation.queue, loop, i, fut)
            futures.append(asyncio.wrap_future(fut))
        try:
            for fut in futures:
                await fut
        except BaseException:
            generation.abort()
            raise
        return generation

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        while not self._closed:
            try:
                self._iteration()
            except Exception:  # a bad step must not take the server down: fail what is in flight
                log.exception("engine step failed; failing %d request(s)", len(self._streams))
                self._fail_all(EngineFailure(STEP_FAILED))

    def _iteration(self) -> None:
        self._wake.clear()  # before draining: a command sent after the drain sets it again
        self._drain()
        if not self.engine.has_unfinished():
            self._wake.wait()
            return
        outputs = self.engine.step()
        now = time.monotonic()
        for out in outputs:
            self._deliver(out, now)
        self._refresh_stats()

    def _refresh_stats(self) -> None:
        try:
            self._stats = engine_snapshot(self.engine)
        except Exception:  # metrics must never break serving
            log.exception("engine.stats() failed")

    def _drain(self) -> None:
        changed = False
        while self._commands:
            command = self._commands.popleft()
            changed = True
            if command[0] == "add":
                _, sub, queue, loop, index, fut = command
                try:
                    self.engine.add_request(list(sub.prompt_ids), sub.params, sub.request_id)
                except Exception as e:  # noqa: BLE001 - returned to the caller (RequestError -> 400)
                    fut.set_exception(e)
                    continue
                self._streams[sub.request_id] = _Stream(queue, loop, index, len(sub.prompt_ids), time.monotonic())
                fut.set_result(None)
            elif command[0] == "fail":
                self._fail_all(EngineFailure(command[1]))
            else:  # abort
                request_id = command[1]
                stream = self._streams.pop(request_id, None)
                if stream is not None:
                    self.engine.abort(request_id)
                    self._count_finished(stream, "abort")
        if changed:
            self._refresh_stats()

    def _deliver(self, out: Any, now: float) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:  # aborted by the client in the meantime
            return
        n = len(out.new_token_ids)
        if n:
            m = self.metrics
            if stream.t_last is None:
                m.ttft.observe(now - stream.t_submit)
                # Several tokens in the first output (not the case today) share the rest of the interval.
                for _ in range(n - 1):
                    m.itl.observe(0.0)
            else:
                for _ in range(n):
                    m.itl.observe((now - stream.t_last) / n)
            stream.t_last = now
            stream.completion_tokens += n
        if out.finished:
            del self._streams[out.request_id]
            self._count_finished(stream, out.finish_reason or "stop")
            self.metrics.e2e.observe(now - stream.t_submit)
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, (stream.index, out))

    def _count_finished(self, stream: _Stream, reason: str) -> None:
        m = self.metrics
        m.finished.labels(reason=reason).inc()
        m.prompt_tokens.inc(stream.prompt_tokens)
        m.generation_tokens.inc(stream.completion_tokens)

    def _fail_all(self, error: BaseException) -> None:
        for request_id, stream in list(self._streams.items()):
            try:
                self.engine.abort(request_id)
            except Exception:  # keep failing the others
                log.exception("abort of %s failed", request_id)
            self._count_finished(stream, "error")
            with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody is waiting any more
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, error)
        self._streams.clear()
        self._refresh_stats()
