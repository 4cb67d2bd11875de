"""The endpoints: /v1/chat/completions, /v1/completions, /v1/models (behind the API key, when there is one),
/health and /metrics (always open, for probes and scrapers)."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from minimax01.server.api_error import APIError
from minimax01.server.chat_completions import chat_completion
from minimax01.server.completions import completion
from minimax01.server.context import ServerContext
from minimax01.server.request_parsing import check_auth


def add_routes(app: FastAPI, ctx: ServerContext) -> None:
    runner = ctx.runner

    @app.get("/health")
    async def health() -> Response:
        if not runner.alive:
            return APIError(503, "the engine thread is not running", type="server_error").response()
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def get_metrics(request: Request) -> Response:
        body, content_type = runner.metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        check_auth(request, ctx)
        return JSONResponse({"object": "list", "data": [{
            "id": ctx.model_name, "object": "model", "created": int(time.time()), "owned_by": "minimax01",
            "max_model_len": ctx.max_model_len}]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await chat_completion(request, ctx)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await completion(request, ctx)
