"""Logprob token strings: completions keys stay unambiguous for tokens that are only part of a UTF-8 character
(`bytes:` escapes, as vLLM writes them), and chat logprobs keep each token's raw `bytes`."""

from __future__ import annotations

from typing import Any

from minimax01.server.openai_format import chat_logprobs, completion_logprobs, token_key


def partial_utf8_ids(tokenizer: Any) -> list[int]:
    """Ids of tokens whose bytes are not valid UTF-8 on their own (a byte-level BPE has at least 0x80-0xff)."""
    ids = []
    for i in range(tokenizer.vocab_size):
        try:
            tokenizer.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            ids.append(i)
    return ids


def test_partial_utf8_tokens_get_distinct_completion_keys(tokenizer: Any) -> None:
    partial = partial_utf8_ids(tokenizer)[:5]
    text_id = tokenizer.encode("hello")[0]
    assert len(partial) == 5
    ids, lps = [partial[0], text_id], [-0.5, -1.0]
    tops = [[(i, -1.0 - k) for k, i in enumerate(partial)], [(text_id, -1.0)]]
    out, end = completion_logprobs(tokenizer, ids, lps, tops, 10)
    keys = list(out["top_logprobs"][0])
    assert len(keys) == 5  # one key per alternative: none overwrote another
    for key, i in zip(keys, partial):
        assert key.startswith("bytes:")
        assert bytes(int(h, 16) for h in key.removeprefix("bytes:").split("\\x")[1:]) == tokenizer.token_bytes(i)
    assert out["tokens"] == [keys[0], token_key(tokenizer, text_id)] and "bytes:" not in out["tokens"][1]
    assert out["tokens"][0] in out["top_logprobs"][0]  # lm-eval compares the token with the top keys
    # Offsets count the text's characters (a partial character shows as one replacement character).
    assert out["text_offset"] == [10, 11] and end == 11 + len(tokenizer.token_bytes(text_id).decode())


def test_chat_logprobs_keep_bytes(tokenizer: Any) -> None:
    partial = partial_utf8_ids(tokenizer)[:2]
    out = chat_logprobs(tokenizer, [partial[0]], [-0.1], [[(partial[0], -0.1), (partial[1], -2.0)]])
    entry = out["content"][0]
    assert entry["bytes"] == list(tokenizer.token_bytes(partial[0]))
    assert [t["bytes"] for t in entry["top_logprobs"]] == [list(tokenizer.token_bytes(i)) for i in partial]
