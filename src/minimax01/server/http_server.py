"""The HTTP server around the app: uvicorn with connection limits that it lacks on its own.

uvicorn (h11) times out only idle keep-alive connections between requests: a client that connects and sends
nothing, or trickles a request head one byte a second, holds its connection forever, and there is no cap on open
connections. `LimitedH11Protocol` adds both; the request *body* deadline is enforced in the app
(middleware.RequestGuard), where a 408 with an error body can still be sent. `GracefulServer` bounds shutdown:
streams run until the deadline, then every in-flight request is failed (an error event, then `[DONE]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from minimax01.server.middleware import DEFAULT_READ_TIMEOUT_S

log = logging.getLogger("minimax01.server")

# After the shutdown deadline the failed streams still need a moment to send their error event and [DONE].
_FLUSH_GRACE_S = 5.0


@dataclass(frozen=True)
class HttpLimits:
    """Connection-level limits of the server (the `serve` flags of the same names)."""

    read_timeout: float = DEFAULT_READ_TIMEOUT_S  # seconds for a request's head, and again for its body
    keep_alive_timeout: float = 5.0  # idle seconds between two requests on a connection
    max_connections: int = 512  # open connections; one more is answered 503 and closed
    shutdown_timeout: float = 30.0  # seconds in-flight requests get after SIGTERM / Ctrl-C

    def __post_init__(self) -> None:
        for name in ("read_timeout", "keep_alive_timeout", "shutdown_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections!r}")


def _raw_error(status: int, reason: str, message: str, code: str, kind: str) -> bytes:
    """A whole HTTP/1.1 error response with an OpenAI-style body and `Connection: close`, for the cases where
    no request was parsed (so h11 cannot frame one)."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode()
    return head + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head (from the connection's opening, or from the
    first byte of a later request on it) and a cap on open connections."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning("refused a connection: %d open (--max-connections)", len(self.connections) - 1)
            transport.write(_raw_error(503, "Service Unavailable", f"the server has too many open connections "
                                       f"({self.limits.max_connections}); retry later", "too_many_connections",
                                       "server_error"))
            transport.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # a new request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or the connection is done)
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.read_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a head arrived: say why the connection ends
            self.transport.write(_raw_error(408, "Request Timeout", f"the request head did not arrive within "
                                            f"{self.limits.read_timeout:g} s", "request_timeout",
                                            "invalid_request_error"))
        self.transport.close()


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose shutdown ends in bounded time: new connections are refused at once, requests in
    flight get `limits.shutdown_timeout` seconds, then `fail_in_flight()` ends them with an error (streams get an
    error event and `[DONE]`) and the process exits normally."""

    def __init__(self, config: uvicorn.Config, limits: HttpLimits, fail_in_flight: Callable[[], None]) -> None:
        super().__init__(config)
        self.limits, self.fail_in_flight = limits, fail_in_flight

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the signal that stopped it once it is done; a requested shutdown that completed
            # is a normal exit here (status 0), not death by SIGTERM.
            self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        deadline = asyncio.get_running_loop().call_later(self.limits.shutdown_timeout, self._deadline)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    def _deadline(self) -> None:
        log.warning("shutdown timeout (%g s) reached: failing the requests still in flight",
                    self.limits.shutdown_timeout)
        self.fail_in_flight()


def server_config(app: Any, host: str, port: int, limits: HttpLimits, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's config for `app` with `limits` (h11 protocol, keep-alive and graceful-shutdown timeouts)."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=functools.partial(LimitedH11Protocol, limits=limits),  # type: ignore[arg-type]
                          timeout_keep_alive=limits.keep_alive_timeout,
                          timeout_graceful_shutdown=limits.shutdown_timeout + _FLUSH_GRACE_S)
