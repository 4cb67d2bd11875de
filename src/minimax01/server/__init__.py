"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching engine.

`serve.serve()` is what `minimax01 serve` runs; `create_app()` / `AsyncEngine` / `build_server()` are the pieces.
"""

from minimax01.server.app import APIError, create_app
from minimax01.server.runner import AsyncEngine, Generation, Submission
from minimax01.server.serve import build_server, load_checkpoint, run_server

__all__ = ["APIError", "AsyncEngine", "Generation", "Submission", "build_server", "create_app", "load_checkpoint",
           "run_server"]
