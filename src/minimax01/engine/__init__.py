"""Continuous-batching inference engine (synchronous core; the server wraps it in an asyncio loop)."""

from minimax01.engine.engine import EngineStats, LLMEngine, RequestOutput, default_stop_ids

__all__ = ["EngineStats", "LLMEngine", "RequestOutput", "default_stop_ids"]
