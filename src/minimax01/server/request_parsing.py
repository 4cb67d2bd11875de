"""From an HTTP request to what the engine takes: authentication, the JSON body checked against its schema,
and the SamplingParams of each choice (lengths checked against max_model_len). Every problem is an APIError
naming the field the client sent."""

from __future__ import annotations

import json
import secrets
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from minimax01.errors import RequestError
from minimax01.sampling_params import SamplingParams
from minimax01.server.api_error import APIError, request_error
from minimax01.server.context import ServerContext
from minimax01.server.schemas import ChatCompletionRequest


# No OpenAI request needs more than a handful of levels (a tool's JSON schema is the deepest part); the bound keeps
# every recursive reader downstream (pydantic, the chat template, json.dumps) far from Python's recursion limit.
MAX_JSON_DEPTH = 64


def _check_json_values(body: Any) -> None:
    """400 for what json.loads accepts but nothing downstream can use: nesting deeper than MAX_JSON_DEPTH and
    strings holding a lone UTF-16 surrogate ("\\ud83d" unpaired), which are not Unicode text. Iterative, so
    that the check itself cannot hit the recursion limit."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "body")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise APIError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels (at {where[:80]})")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            for text in (key, item):
                if isinstance(text, str) and not text.isascii():
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        raise APIError(400, f"{where[:80]}: a string contains a lone UTF-16 surrogate escape, which is "
                                            f"not valid Unicode", param=_top_field(where, key)) from None
            if isinstance(item, (dict, list)):
                child = f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]"
                stack.append((item, depth + 1, child))


def _top_field(where: str, key: Any) -> str | None:
    """The top-level field that `where` + `key` is in ("body.messages[0]" -> "messages")."""
    path = where.removeprefix("body").lstrip(".")
    top = path.split(".")[0].split("[")[0] if path else (key if isinstance(key, str) else "")
    return top or None


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # an integer literal longer than Python's int-string limit (4300 digits)
        raise APIError(400, f"request body is not usable JSON: {e}") from None
    _check_json_values(body)
    return body


def _validate(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = e.errors()
        err = errors[0]
        param = str(err["loc"][0]) if err["loc"] else None
        alternatives = [x for x in errors if x["loc"] and str(x["loc"][0]) == param and len(x["loc"]) > 1]
        if len(alternatives) > 1:  # a union field: pydantic reports one error per accepted type
            kinds = ", ".join(dict.fromkeys(str(x["loc"][1]) for x in alternatives))
            raise APIError(400, f"{param}: invalid type or value; expected one of: {kinds}", param=param) from None
        loc = ".".join(str(x) for x in err["loc"])
        raise APIError(400, f"{loc or 'body'}: {err['msg']}", param=param) from None


def check_auth(request: Request, ctx: ServerContext) -> None:
    """401 unless the request carries the server's API key (when it has one)."""
    if ctx.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), ctx.api_key.encode()):
        raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")


async def parse_request(request: Request, ctx: ServerContext, model: type[BaseModel]) -> Any:
    """Auth, body, schema and model name of a generation request (in the order a client would fix them)."""
    check_auth(request, ctx)
    req = _validate(model, await _read_json(request))
    if req.model != ctx.model_name:
        raise APIError(404, f"the model {req.model!r} does not exist; this server serves {ctx.model_name!r}",
                       param="model", code="model_not_found")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
    return req


def sampling_params(req: Any, ctx: ServerContext, prompt_len: int, max_tokens: int | None, logprobs: int | None,
                    seed: int | None, names: dict[str, str], prompt_logprobs: int | None = None,
                    grammar: str | None = None, raw_text: bool = False) -> SamplingParams:
    """SamplingParams of one choice; prompt length and max_tokens are checked against max_model_len.
    `names`: the API names of the max_new_tokens / logprobs fields (for error messages). `grammar`: what the
    output must match (server/structured_outputs.py). `raw_text`: keep special tokens, unspaced, whatever the
    request says (a tool-call parser reads them)."""
    if prompt_len >= ctx.max_model_len:
        raise APIError(400, f"the prompt has {prompt_len} tokens; this model's maximum context length is "
                            f"{ctx.max_model_len} tokens (prompt + completion)",
                       param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                       code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = ctx.max_model_len - prompt_len
    elif max_tokens >= 1 and prompt_len + max_tokens > ctx.max_model_len:
        field_name = names["max_new_tokens"]
        raise APIError(400, f"{field_name}={max_tokens} plus the {prompt_len}-token prompt exceeds the maximum "
                            f"context length {ctx.max_model_len}; use at most {ctx.max_model_len - prompt_len}",
                       param=field_name, code="context_length_exceeded")
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    defaults = ctx.generation_defaults  # the checkpoint's generation_config.json, for what the request leaves out
    params = SamplingParams(
        temperature=defaults.get("temperature", 1.0) if req.temperature is None else req.temperature,
        top_p=defaults.get("top_p", 1.0) if req.top_p is None else req.top_p,
        top_k=int(defaults.get("top_k", 0)) if req.top_k is None else req.top_k,
        min_p=req.min_p, repetition_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        seed=seed, max_new_tokens=max_tokens, stop=stop, logprobs=logprobs, ignore_eos=req.ignore_eos,
        prompt_logprobs=prompt_logprobs, grammar=grammar,
        skip_special_tokens=req.skip_special_tokens and not raw_text,
        spaces_between_special_tokens=req.spaces_between_special_tokens and not raw_text,
    )
    try:
        params.validate()
    except RequestError as e:
        raise request_error(e, names) from None
    return params


def choice_seeds(seed: int | None, n: int) -> list[int | None]:
    # Choice i gets seed + i: n independent, reproducible samples.
    return [None if seed is None else seed + i for i in range(n)]
