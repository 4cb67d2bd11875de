"""Continuous-batching inference engine (synchronous core; the server wraps it in an asyncio loop).

- protocol.py: `StepModel`, everything the engine uses of a model.
- engine.py: `LLMEngine`, the loop (requests in, one model step per iteration, sampled tokens out).
- outputs.py: `RequestOutput` (what a step produced for a request), `EngineStats`.
- prompt_logprobs.py: which prefill rows score prompt tokens, and their scores.
- scheduler.py: which requests run in the next step, and with how many tokens.
- prefix_cache.py: `PrefixCache`, cached prompt prefixes (shared KV blocks + lightning snapshots).
- snapshots.py: `SnapshotStore`, lightning-state snapshots in device and host byte budgets.
- cuda_graph.py: `DecodeGraphRunner`, a StepModel that replays decode steps from CUDA graphs.
"""

from minimax01.engine.engine import LLMEngine, default_stop_ids
from minimax01.engine.outputs import EngineStats, RequestOutput
from minimax01.engine.protocol import StepModel

__all__ = ["EngineStats", "LLMEngine", "RequestOutput", "StepModel", "default_stop_ids"]
