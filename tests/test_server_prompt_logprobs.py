"""Prompt logprobs through a real server process: `/v1/completions` with `echo` + `logprobs` (OpenAI's shape, as
lm-evaluation-harness reads it) and vLLM's `prompt_logprobs`, checked against a log_softmax over the served
checkpoint's own full-forward logits, computed in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from test_server import GEN_PROMPT, MODEL, SCRIPTS, TRIGGER
from test_server import checkpoint, client, server  # noqa: F401  (the same module-scoped fixtures, a server per module)

from minimax01.server.openai_format import token_key

TEXT = "The quick brown fox jumps over the lazy dog, then rests."


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def served(checkpoint: Path) -> tuple[Any, Any]:
    """The model and tokenizer the server loads, loaded the same way in this process."""
    from minimax01.loading import load_for_serving

    model, tokenizer, _ = load_for_serving(str(checkpoint), "fp32", "cpu")
    return model, tokenizer


def reference(served: tuple[Any, Any], ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] log_softmax of the full forward: row q scores token q + 1."""
    model, _ = served
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)


def test_echo_logprobs_with_openai_client(client: Any, served: tuple[Any, Any]) -> None:
    ids = served[1].encode(TEXT)
    ref = reference(served, ids)
    choice = client.completions.create(model=MODEL, prompt=TEXT, echo=True, logprobs=2, max_tokens=0).choices[0]
    assert choice.text == TEXT and choice.finish_reason == "length"
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.text_offset[0] == 0
    expected = [float(ref[q, ids[q + 1]]) for q in range(len(ids) - 1)]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    for q, top in enumerate(lp.top_logprobs[1:]):
        # The top two and the prompt's own token (fewer keys when token texts coincide).
        assert 1 <= len(top) <= 3 and max(top.values()) == pytest.approx(float(ref[q].max()), abs=1e-4)
    assert lp.text_offset == sorted(lp.text_offset) and "".join(lp.tokens) == TEXT


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_lm_eval_loglikelihood_request(http: httpx.Client, served: tuple[Any, Any], max_tokens: int) -> None:
    """lm-evaluation-harness's loglikelihood request: token-id prompts (context + continuation), echo, logprobs 1;
    it sums token_logprobs[ctxlen:] (without the generated token when max_tokens is 1) and checks greediness
    against top_logprobs."""
    tokenizer = served[1]
    context, continuations = tokenizer.encode("Question: what rests? Answer:"), [" the dog", " a fox jumps"]
    prompts = [context + tokenizer.encode(c) for c in continuations]
    resp = http.post("/v1/completions", json={"model": MODEL, "prompt": prompts, "echo": True, "logprobs": 1,
                                              "max_tokens": max_tokens, "temperature": 0, "seed": 1234})
    assert resp.status_code == 200, resp.text
    choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
    assert len(choices) == 2
    for ids, choice in zip(prompts, choices):
        ref = reference(served, ids)
        end = len(ids)
        lps, tops = choice["logprobs"]["token_logprobs"], choice["logprobs"]["top_logprobs"]
        assert len(lps) == end + max_tokens and choice["text"].startswith(tokenizer.decode(ids))
        answer = sum(float(ref[q - 1, ids[q]]) for q in range(len(context), end))
        assert sum(lps[len(context):end]) == pytest.approx(answer, abs=1e-3)
        greedy = all(int(ref[q - 1].argmax()) == ids[q] for q in range(len(context), end))
        tokens = choice["logprobs"]["tokens"]
        assert all(max(tops[q], key=tops[q].get) == tokens[q] for q in range(len(context), end)) == greedy


def test_lm_eval_request_whose_generated_token_is_eos(http: httpx.Client, served: tuple[Any, Any]) -> None:
    """lm-evaluation-harness drops the last logprobs entry as the one generated token (token_logprobs[ctxlen:-1]).
    When that token is EOS, the request stops, and the entry must still be there (the text hides EOS, the logprobs
    do not), or the continuation's last token would be dropped instead. The scripted model writes EOS here."""
    tokenizer = served[1]
    prompt = f"{TRIGGER} {GEN_PROMPT}{SCRIPTS[0]}"  # the whole script is written: the model's next token is EOS
    ids = tokenizer.encode(prompt)
    resp = http.post("/v1/completions", json={"model": MODEL, "prompt": [ids], "echo": True, "logprobs": 1,
                                              "max_tokens": 1, "temperature": 0})
    assert resp.status_code == 200, resp.text
    (choice,) = resp.json()["choices"]
    assert choice["finish_reason"] == "stop" and choice["text"] == prompt
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(ids) + 1
    assert lp["tokens"][-1] == token_key(tokenizer, tokenizer.eos_token_id)
    assert lp["token_logprobs"][-1] == pytest.approx(0.0, abs=1e-3)  # the scripted logits make EOS certain


def test_streamed_echo_equals_non_streamed(client: Any) -> None:
    kw = {"model": MODEL, "prompt": TEXT, "echo": True, "logprobs": 1, "max_tokens": 4, "temperature": 0}
    whole = client.completions.create(**kw).choices[0]
    text, tokens, lps = "", [], []
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                lps += c.logprobs.token_logprobs
    assert text == whole.text and text.startswith(TEXT) and len(text) > len(TEXT)
    assert tokens == whole.logprobs.tokens and lps == pytest.approx(whole.logprobs.token_logprobs)


def test_vllm_prompt_logprobs(client: Any, served: tuple[Any, Any]) -> None:
    ids = served[1].encode(TEXT)
    ref = reference(served, ids)
    resp = client.completions.create(model=MODEL, prompt=ids, max_tokens=2, temperature=0,
                                     extra_body={"prompt_logprobs": 1})
    choice = resp.choices[0].model_dump()
    assert choice["text"] and resp.usage.completion_tokens == 2  # no echo: only the completion's text
    positions = choice["prompt_logprobs"]
    assert len(positions) == len(ids) and positions[0] is None
    for q, entries in enumerate(positions[1:]):
        own = entries[str(ids[q + 1])]
        assert own["logprob"] == pytest.approx(float(ref[q, ids[q + 1]]), abs=1e-4)
        assert own["rank"] == int((ref[q] > ref[q, ids[q + 1]] + 1e-6).sum()) + 1
        best = entries[str(int(ref[q].argmax()))]
        assert best["rank"] == 1 and best["decoded_token"] == token_key(served[1], int(ref[q].argmax()))


def test_max_tokens_zero_needs_echo(http: httpx.Client) -> None:
    resp = http.post("/v1/completions", json={"model": MODEL, "prompt": TEXT, "max_tokens": 0})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"
    echoed = http.post("/v1/completions", json={"model": MODEL, "prompt": TEXT, "max_tokens": 0, "echo": True})
    assert echoed.status_code == 200 and echoed.json()["choices"][0]["text"] == TEXT
    assert echoed.json()["choices"][0]["logprobs"] is None and echoed.json()["usage"]["completion_tokens"] == 0
