"""The ASGI middleware in front of every route: the request body size cap and the requests_total metric.

It works on raw ASGI messages rather than in a route, because the cap must hold before a body is read and the
count must see every /v1 response, the ones of errors raised before any route too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect

from minimax01.server.api_error import APIError

# A 1M-token prompt is ~4 MB of text or ~7 MB as a JSON list of token ids.
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
# Known endpoints are metric labels as they are; any other path is "other" (bounded label cardinality).
_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models")
# How long a request body may take to arrive; the head has the same deadline (http_server.LimitedH11Protocol).
DEFAULT_READ_TIMEOUT_S = 30.0
_NOT_STARTED = 0  # the status recorded before a response starts
log = logging.getLogger("minimax01.server")


class RequestGuard:
    """Body size cap (413 from Content-Length at once, or as soon as a chunked body exceeds it), body read
    deadline (408 and the connection closed: the rest of the body would be read as the next request), the
    requests_total metric (`count(endpoint, status)` for every /v1 response) and a 500 for unexpected errors."""

    def __init__(self, app: Any, max_body_bytes: int, count: Callable[[str, int], None],
                 read_timeout: float = DEFAULT_READ_TIMEOUT_S) -> None:
        self.app, self.max_body_bytes, self.count, self.read_timeout = app, max_body_bytes, count, read_timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        status = [_NOT_STARTED]

        async def send_counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await self._too_large().response()(scope, receive, send_counted)
                return
            received, body_complete = 0, False
            deadline = asyncio.get_running_loop().time() + self.read_timeout

            async def limited_receive() -> dict[str, Any]:
                nonlocal received, body_complete
                if body_complete:  # later calls only wait for a disconnect: no deadline
                    return await receive()
                try:
                    message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
                except asyncio.TimeoutError:
                    raise APIError(408, f"the request body did not arrive within {self.read_timeout:g} s (is "
                                        f"Content-Length larger than the body?)", code="request_timeout",
                                   close=True) from None
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise self._too_large()
                    body_complete = not message.get("more_body", False)
                return message

            await self.app(scope, limited_receive, send_counted)
        except ClientDisconnect:  # gone while its body was read (or the server is stopping): nobody to answer
            status[0] = 499
        except Exception as e:
            # Answered here rather than re-raised to the server (Starlette's last-resort handler re-raises, and
            # uvicorn then resets the keep-alive connection without `Connection: close`, so the client's next
            # request on it fails). Once a response has started only closing the connection can signal the error.
            if status[0] != _NOT_STARTED:
                raise
            if not isinstance(e, APIError):  # an APIError here is the guard's own (408, 413) outside a route
                log.exception("unhandled error in %s %s", scope.get("method"), path)
                e = APIError(500, f"internal error: {type(e).__name__}", type="server_error")
            await e.response()(scope, receive, send_counted)
        finally:
            if path.startswith("/v1/"):
                self.count(path if path in _ENDPOINTS else "other", status[0])

    def _too_large(self) -> APIError:
        return APIError(413, f"request body exceeds {self.max_body_bytes} bytes", code="request_too_large")
