"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching engine.

`serve.serve()` is what `minimax01 serve` runs; `app.create_app()`, `runner.AsyncEngine` and
`serve.build_server()` are the pieces. A request's path: middleware (body cap, metrics) -> routes ->
chat_completions / completions (request_parsing, then the engine through runner) -> openai_format / streaming.
"""
