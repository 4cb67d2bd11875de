"""minimax01: exact, fast, long-context inference for MiniMax-Text-01."""

from minimax01.config import MiniMaxConfig
from minimax01.errors import CheckpointError, ConfigError, MiniMaxError, RequestError
from minimax01.causal_lm import MiniMaxForCausalLM

__all__ = [
    "MiniMaxConfig",
    "MiniMaxForCausalLM",
    "MiniMaxError",
    "ConfigError",
    "CheckpointError",
    "RequestError",
]
__version__ = "0.1.0"
