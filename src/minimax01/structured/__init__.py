"""Structured outputs: grammars that a request's output must match, and the per-request matchers that turn them
into the token mask the sampler applies (llguidance does the matching; docs/architecture.md says why)."""

from minimax01.structured.bitmask import apply_token_bitmask, unpack_bitmask
from minimax01.structured.grammars import (
    ToolCallFrame,
    check_grammar,
    json_object_grammar,
    json_schema_grammar,
    tool_call_grammar,
)
from minimax01.structured.matcher import GrammarMatcher, GrammarVocabulary, fill_bitmasks

__all__ = [
    "GrammarMatcher",
    "GrammarVocabulary",
    "ToolCallFrame",
    "apply_token_bitmask",
    "check_grammar",
    "fill_bitmasks",
    "json_object_grammar",
    "json_schema_grammar",
    "tool_call_grammar",
    "unpack_bitmask",
]
