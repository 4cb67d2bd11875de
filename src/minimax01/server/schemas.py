"""Pydantic models of the request bodies (OpenAI Chat Completions / Completions + vLLM-style extensions).

Types are checked strictly (no "0.5" -> 0.5 or true -> 1 coercion: a client sending those has a bug the
OpenAI API would report too); value ranges are checked by `SamplingParams.validate()` so that they live in one
place; messages and tools are checked by `chat.normalize_messages` / `chat.normalize_tools`. Unknown fields
are ignored, as clients send optional fields (`user`, `parallel_tool_calls`, ...) that do not change decoding.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Upper bound on `n` (choices per prompt): each choice is a separate engine request.
MAX_N = 16


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: FunctionName


class JsonSchemaFormat(_Strict):
    name: str
    description: str | None = None
    # `schema` would shadow a pydantic BaseModel attribute; the JSON key is still "schema".
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # the output always matches the schema (constrained decoding), strict or not


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _SamplingFields(_Strict):
    """Fields shared by both endpoints."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Extensions (vLLM names).
    top_k: int | None = None  # None: generation_config.json's, else 0 (off)
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    # Accepted only when empty/neutral: supporting them needs engine hooks that do not exist yet.
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None  # structured outputs (server/structured_outputs.py)
    skip_special_tokens: bool = True  # vLLM's detokenization options
    spaces_between_special_tokens: bool = True


class ChatCompletionRequest(_SamplingFields):
    messages: list[Any]
    tools: list[Any] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # extra chat-template variables (vLLM's extension)


class CompletionRequest(_SamplingFields):
    # A string, a list of token ids, or a list of either (one choice set per prompt).
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None  # with echo: also for every prompt token (the first one's is null)
    echo: bool = False  # prompt + completion text; max_tokens may then be 0 (score the prompt only)
    suffix: str | None = None
    prompt_logprobs: int | None = None  # vLLM's extension: top logprobs of every prompt token, in its own shape
