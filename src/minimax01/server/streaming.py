"""Delivering a generation to the client: SSE framing for streams, and for non-streaming requests the wait for
every output while watching for a client that went away (its engine requests are then aborted)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from minimax01.server.api_error import APIError
from minimax01.server.runner import EngineFailure, Generation

# How often a non-streaming request checks whether its client is still there.
_DISCONNECT_POLL_S = 0.25
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse_stream(chunks: AsyncIterator[dict[str, Any]], generation: Generation) -> AsyncIterator[str]:
    """SSE framing; an error after the headers went out is sent as a final `{"error": ...}` event."""
    try:
        async for chunk in chunks:
            yield _sse(chunk)
    except EngineFailure as e:
        yield _sse(APIError(500, str(e), type="server_error").body())
    finally:
        generation.abort()  # no-op once every request finished; frees the slots when the client went away
    yield "data: [DONE]\n\n"


def stream_response(chunks: AsyncIterator[dict[str, Any]], generation: Generation) -> StreamingResponse:
    """The SSE response of `chunks` (OpenAI chunk objects), ended by `data: [DONE]`."""
    # The background abort also covers a disconnect before the body iterator ever started.
    return StreamingResponse(_sse_stream(chunks, generation), media_type="text/event-stream",
                             headers=_SSE_HEADERS, background=BackgroundTask(generation.abort))


async def _until_disconnect(request: Request, work: asyncio.Future[Any]) -> Any:
    """Awaits `work`, cancelling it (which aborts its engine requests) if the client goes away."""
    while True:
        done, _ = await asyncio.wait({work}, timeout=_DISCONNECT_POLL_S)
        if done:
            return work.result()
        if await request.is_disconnected():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise APIError(499, "client disconnected", code="client_disconnected")


async def collect(request: Request, generation: Generation, update: Callable[[int, Any], None]) -> None:
    """Feeds every output to `update`; aborts the generation if the client disconnects first."""
    async def run() -> None:
        async for i, out in generation:
            update(i, out)

    try:
        await _until_disconnect(request, asyncio.ensure_future(run()))
    finally:
        generation.abort()
