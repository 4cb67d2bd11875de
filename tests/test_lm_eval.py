"""lm-evaluation-harness as a real client: `lm_eval run --model local-completions` (a subprocess, the command
the README gives) against `minimax01 serve` (a real process on 127.0.0.1), on the local tasks of
tests/data/lm_eval (one multiple_choice, one loglikelihood_rolling), with no network: the tokenizer is the
checkpoint's own directory and the datasets are local jsonl files.

Every number lm_eval reports is recomputed here from the served checkpoint's own logits (a full forward in this
process), after tokenizing the way lm_eval does, so a wrong token split, an off-by-one in the echoed logprobs or a
wrong ctxlen shows up as a mismatch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from server_process import serve_cli
from test_server import tiny_checkpoint

from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.special_tokens import BOS
from minimax01.tokenizer import MiniMaxTokenizer, load_tokenizer

REPO = Path(__file__).resolve().parent.parent
TASK_DIR = REPO / "tests" / "data" / "lm_eval"
CHOICE_TASK, TEXT_TASK = "minimax01_tiny_choice", "minimax01_tiny_text"
SERVED_NAME = "tiny-lm-eval"
# lm_eval's max_length: requests of at most MAX_LENGTH - 1 tokens (it keeps one for the token it asks the server to
# generate; every request of CHOICE_TASK fits, none is truncated) and rolling windows of WINDOW = MAX_LENGTH - 2
# tokens (one more for the context), small enough that the documents of TEXT_TASK take one, two and three windows.
MAX_LENGTH = 48
WINDOW = MAX_LENGTH - 2
# Prompts per /v1/completions request: several, so that the server's batch of prompts and the order of its choices
# are exercised too (the 18 choices of CHOICE_TASK make 5 requests; a rolling document is one request).
BATCH_SIZE = 4
# Both sides are fp32 on the CPU, but the server computes the logits through its own path (chunked prefill, paged
# KV cache, the lightning attention's recurrent form), the reference through one full forward: the reduction orders
# may differ, which moves a token's logprob by ~1e-5 at most (test_server_prompt_logprobs checks each token at 1e-4).
# A sum over n tokens is compared at n times that bound. (On this tiny model the two agree exactly today.)
TOKEN_ABS_TOL = 1e-4


def lm_eval_command(url: str, tokenizer_dir: Path, output_dir: Path) -> list[str]:
    """The README's lm_eval command line: token-id requests (lm_eval tokenizes with the checkpoint's tokenizer,
    read from its directory, so nothing is fetched from the hub), up to BATCH_SIZE prompts per request."""
    model_args = ",".join([f"model={SERVED_NAME}", f"base_url={url}/v1/completions",
                           "tokenizer_backend=huggingface", f"tokenizer={tokenizer_dir}",
                           "tokenized_requests=True", f"max_length={MAX_LENGTH}"])
    return [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args", model_args,
            "--batch_size", str(BATCH_SIZE), "--tasks", f"{CHOICE_TASK},{TEXT_TASK}", "--include_path", str(TASK_DIR),
            "--log_samples", "--output_path", str(output_dir)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def lm_eval_output(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{"results": results_*.json's "results", task: [its logged samples]} of one lm_eval run against the server."""
    work = tmp_path_factory.mktemp("lm_eval")
    urls: Iterator[str] = serve_cli(checkpoint, work / "server.log", "--served-model-name", SERVED_NAME,
                                    "--max-model-len", "512")
    try:
        url = next(urls)
        # Offline, with a private cache: the task datasets are local files (the json builder needs no download) and
        # a stray hub access fails at once instead of hanging on a machine without internet.
        env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        # cwd: the tasks' data_files are relative to the repository root. The limit only catches a hang.
        run = subprocess.run(lm_eval_command(url, checkpoint, work / "out"), cwd=REPO, env=env, timeout=600,
                             capture_output=True, text=True)
    finally:
        urls.close()  # stops the server now
    assert run.returncode == 0, f"lm_eval failed:\n{run.stdout[-5000:]}\n{run.stderr[-5000:]}"
    (results,) = (work / "out").rglob("results_*.json")
    output: dict[str, Any] = {"results": json.loads(results.read_text())["results"]}
    for task in (CHOICE_TASK, TEXT_TASK):
        (samples,) = (work / "out").rglob(f"samples_{task}_*.jsonl")
        output[task] = sorted((json.loads(line) for line in samples.read_text().splitlines()),
                              key=lambda s: s["doc_id"])
    return output


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> tuple[MiniMaxForCausalLM, MiniMaxTokenizer]:
    """The served checkpoint in this process, in the server's dtype (fp32 on the CPU)."""
    model = MiniMaxForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, load_tokenizer(checkpoint)


def encode_pair(tokenizer: MiniMaxTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm_eval's split of a (context, continuation) request for a causal model (TemplateLM._encode_pair): the
    context's trailing spaces move to the continuation, the whole text is encoded once and the continuation is
    what follows the context's own encoding (so a token merged across the boundary counts as continuation)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, context_ids = tokenizer.encode(context + continuation), tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def score(model: MiniMaxForCausalLM, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """(sum of the continuation's token logprobs given the context, whether greedy decoding writes it)."""
    ids = context + continuation
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, len(context) - 1:len(ids) - 1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(continuation)
    chosen = logprobs.gather(1, target[:, None])[:, 0]
    return float(chosen.double().sum()), bool((logprobs.argmax(dim=-1) == target).all())


def rolling_loglikelihood(model: MiniMaxForCausalLM, bos: int, ids: list[int]) -> tuple[float, int]:
    """(loglikelihood of the document `ids`, windows) as lm_eval's loglikelihood_rolling scores it: each token
    once, BOS before the first; a window scores the next (up to) WINDOW tokens and sees the WINDOW tokens before
    its last one, so the last window's context reaches back into tokens already scored."""
    seq = [bos] + ids  # seq[k + 1] is ids[k]
    total, done, windows = 0.0, 0, 0
    while done < len(ids):
        end = min(len(ids), done + WINDOW)  # this window scores ids[done:end] = seq[done + 1:end + 1]
        start = max(0, end - WINDOW)  # ... from the inputs seq[start:end]
        total += score(model, seq[start:done + 1], seq[done + 1:end + 1])[0]
        done, windows = end, windows + 1
    return total, windows


def read_jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TASK_DIR / name).read_text().splitlines()]


def test_multiple_choice_matches_in_process_scores(lm_eval_output: dict[str, Any],
                                                    reference: tuple[MiniMaxForCausalLM, MiniMaxTokenizer]) -> None:
    model, tokenizer = reference
    docs, samples = read_jsonl("tiny_choice.jsonl"), lm_eval_output[CHOICE_TASK]
    assert [s["doc_id"] for s in samples] == list(range(len(docs)))
    correct = []
    for doc, sample in zip(docs, samples):
        requests = [sample["arguments"][f"gen_args_{i}"] for i in range(len(doc["choices"]))]
        # The task config renders as written: one request per choice, the question as context.
        assert all(r["arg_0"] == f"Question: {doc['question']}\nAnswer:" for r in requests)
        assert [r["arg_1"] for r in requests] == [f" {c}" for c in doc["choices"]]
        pairs = [encode_pair(tokenizer, r["arg_0"], r["arg_1"]) for r in requests]
        assert all(len(c) + len(k) <= MAX_LENGTH - 1 for c, k in pairs)  # lm_eval truncated nothing
        expected = [score(model, *pair) for pair in pairs]
        # Logged as strings: [[loglikelihood, is_greedy], ...] per choice.
        got = [(float(ll), greedy == "True") for ll, greedy in sample["filtered_resps"]]
        assert len(got) == len(expected)
        for (ll, greedy), (expected_ll, expected_greedy), (_, continuation) in zip(got, expected, pairs):
            assert ll == pytest.approx(expected_ll, abs=TOKEN_ABS_TOL * len(continuation))
            assert greedy == expected_greedy
        predicted = max(range(len(expected)), key=lambda i: expected[i][0])
        correct.append(float(predicted == doc["answer"]))
        assert sample["acc"] == correct[-1]
    assert lm_eval_output["results"][CHOICE_TASK]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_rolling_loglikelihood_matches_in_process_scores(
        lm_eval_output: dict[str, Any], reference: tuple[MiniMaxForCausalLM, MiniMaxTokenizer]) -> None:
    model, tokenizer = reference
    docs, samples = read_jsonl("tiny_text.jsonl"), lm_eval_output[TEXT_TASK]
    assert [s["doc_id"] for s in samples] == list(range(len(docs)))
    bos = tokenizer.token_to_id(BOS)  # lm_eval's prefix token: the tokenizer's bos_token
    assert bos is not None
    total_ll, total_tokens, total_words, total_bytes = 0.0, 0, 0, 0
    windows = set()
    for doc, sample in zip(docs, samples):
        ids = tokenizer.encode(doc["text"])
        expected, n_windows = rolling_loglikelihood(model, bos, ids)
        windows.add(n_windows)
        (got,) = sample["filtered_resps"]
        assert float(got) == pytest.approx(expected, abs=TOKEN_ABS_TOL * len(ids))
        words, size = len(doc["text"].split()), len(doc["text"].encode())
        assert sample["word_perplexity"][1] == words and sample["byte_perplexity"][1] == size
        total_ll, total_tokens = total_ll + expected, total_tokens + len(ids)
        total_words, total_bytes = total_words + words, total_bytes + size
    assert windows == {1, 2, 3}  # the data covers a single window, a short last window and a middle one
    results = lm_eval_output["results"][TEXT_TASK]
    # An error e <= TOKEN_ABS_TOL * total_tokens of the summed ll is a relative error ~e / words of the word
    # perplexity exp(-ll / words), and an absolute error e / (bytes ln 2) of bits per byte -ll / (bytes ln 2).
    ll_tol = TOKEN_ABS_TOL * total_tokens
    assert results["word_perplexity,none"] == pytest.approx(math.exp(-total_ll / total_words),
                                                            rel=ll_tol / total_words)
    assert results["bits_per_byte,none"] == pytest.approx(-total_ll / total_bytes / math.log(2),
                                                          abs=ll_tol / total_bytes / math.log(2))
