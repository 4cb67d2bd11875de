"""APIError: every failure of the HTTP API is answered as OpenAI's `{"error": {"message", "type", "param",
"code"}}` body with a 4xx/5xx status."""

from __future__ import annotations

import re
from typing import Any

from fastapi.responses import JSONResponse

from minimax01.errors import RequestError


class APIError(Exception):
    """An error answered as OpenAI's `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.close = close  # answer with `Connection: close` (the connection cannot carry another request)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={"Connection": "close"} if self.close else None)


def _param_of(message: str) -> str | None:
    """The field a RequestError message starts with ("messages[0].content must ..." -> "messages")."""
    m = re.match(r"[A-Za-z_]+", message)
    return m.group() if m else None


def request_error(e: RequestError, names: dict[str, str] | None = None) -> APIError:
    """400 for a RequestError; `names` renames SamplingParams fields to the API fields the client sent."""
    message = str(e)
    param = _param_of(message)
    if names and param in names:
        message = names[param] + message[len(param):]
        param = names[param]
    return APIError(400, message, param=param)
