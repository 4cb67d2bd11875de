"""`create_app`: the OpenAI-compatible ASGI app (FastAPI) over an AsyncEngine.

No model logic in the server: requests are validated (request_parsing), rendered to token ids (chat template +
tokenizer), handed to the AsyncEngine, and its outputs are turned into OpenAI response objects or SSE chunks
(openai_format, streaming). Every failure is answered as `{"error": {...}}` (api_error) with a 4xx/5xx status:
the expected ones by the handlers below, anything unexpected by middleware.RequestGuard.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from minimax01.chat.tool_parsers import reasoning_parser_for, tool_parser_for
from minimax01.errors import RequestError
from minimax01.loading import ChatSetup, default_chat_setup
from minimax01.server.api_error import APIError, request_error
from minimax01.server.context import ServerContext
from minimax01.server.middleware import DEFAULT_MAX_BODY_BYTES, DEFAULT_READ_TIMEOUT_S, RequestGuard
from minimax01.server.routes import add_routes
from minimax01.server.runner import AsyncEngine, EngineFailure
from minimax01.tokenizer import MiniMaxTokenizer


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return APIError(e.status_code, str(e.detail), code=code).response()

    @app.exception_handler(RequestError)  # raised by the engine's add_request: checks the server does not repeat
    async def _engine_request_error(_: Request, e: RequestError) -> JSONResponse:
        return request_error(e).response()

    @app.exception_handler(EngineFailure)
    async def _engine_error(_: Request, e: EngineFailure) -> JSONResponse:
        return APIError(500, str(e), type="server_error").response()


def create_app(engine_runner: AsyncEngine, model_name: str, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, tokenizer: MiniMaxTokenizer | None = None,
               chat: ChatSetup | None = None, read_timeout: float = DEFAULT_READ_TIMEOUT_S) -> FastAPI:
    """The ASGI app serving `engine_runner` under the model id `model_name`.

    `tokenizer` defaults to the engine's own. With `api_key`, /v1/* requires `Authorization: Bearer <key>`
    (/health and /metrics stay open for probes and scrapers). `chat` gives the chat template, the parsers
    and the sampling defaults (default: the tokenizer's template, Text-01's parsers, no defaults). A request
    body must arrive within `read_timeout` seconds (else 408).
    """
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key must not be empty (the empty bearer token would pass)")
    engine = engine_runner.engine
    tok = tokenizer if tokenizer is not None else engine.tokenizer
    if tok is None:
        raise ValueError("the server needs a tokenizer (pass one or give the engine one)")
    chat = chat if chat is not None else default_chat_setup(tok)
    ctx = ServerContext(engine_runner, tok, model_name, engine.max_model_len, engine.config.vocab_size, api_key,
                        tool_parser_for(chat.format.tool_call_parser),
                        reasoning_parser_for(chat.format.reasoning_parser), chat.chat_template,
                        chat.generation_defaults)
    metrics = engine_runner.metrics
    app = FastAPI(title="minimax01", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes, read_timeout=read_timeout,
                       count=lambda ep, status: metrics.requests.labels(endpoint=ep, status=str(status)).inc())
    _add_error_handlers(app)
    add_routes(app, ctx)
    return app
