"""The ASGI middleware in front of every route: the request body size cap and the requests_total metric.

It works on raw ASGI messages rather than in a route, because the cap must hold before a body is read and the
count must see every /v1 response, the ones of errors raised before any route too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from minimax01.server.api_error import APIError

# A 1M-token prompt is ~4 MB of text or ~7 MB as a JSON list of token ids.
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
# Known endpoints are metric labels as they are; any other path is "other" (bounded label cardinality).
_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models")
_NOT_STARTED = 0  # the status recorded before a response starts
log = logging.getLogger("minimax01.server")


class RequestGuard:
    """Body size cap (413 from Content-Length at once, or as soon as a chunked body exceeds it) and the
    requests_total metric (`count(endpoint, status)` for every /v1 response)."""

    def __init__(self, app: Any, max_body_bytes: int, count: Callable[[str, int], None]) -> None:
        self.app, self.max_body_bytes, self.count = app, max_body_bytes, count

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
            received = 0

            async def limited_receive() -> dict[str, Any]:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise self._too_large()
                return message

            await self.app(scope, limited_receive, send_counted)
        except Exception as e:
            # Answered here rather than re-raised to the server (Starlette's last-resort handler re-raises, and
            # uvicorn then resets the keep-alive connection without `Connection: close`, so the client's next
            # request on it fails). Once a response has started only closing the connection can signal the error.
            if status[0] != _NOT_STARTED:
                raise
            log.exception("unhandled error in %s %s", scope.get("method"), path)
            await APIError(500, f"internal error: {type(e).__name__}", type="server_error").response()(
                scope, receive, send_counted)
        finally:
            if path.startswith("/v1/"):
                self.count(path if path in _ENDPOINTS else "other", status[0])

    def _too_large(self) -> APIError:
        return APIError(413, f"request body exceeds {self.max_body_bytes} bytes", code="request_too_large")
