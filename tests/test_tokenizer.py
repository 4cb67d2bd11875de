"""tokenizer.py: tiny-tokenizer training, encode/decode, incremental decoding, stop tokens, load errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from minimax01.chat.template import CHAT_TEMPLATE
from minimax01.errors import CheckpointError
from minimax01.special_tokens import BOS, EOS, FUNCTION_CALL, SPECIAL_TOKENS, UNK
from minimax01.tokenizer import MiniMaxTokenizer, load_tokenizer, stop_token_ids, train_tiny_tokenizer

# The tokenizer_config.json released with MiniMax-Text-01 (its chat template and special tokens).
REFERENCE = Path(__file__).parent / "data" / "MiniMax-Text-01.tokenizer_config.json"

TEXTS = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  \n\n\ttabs\r\nCRLF",
    "今天上海的天气怎么样？",
    "emoji 😀🚀 family 👨‍👩‍👧‍👦 flags 🇨🇳 combining e\u0301 zero-width\u200bspace",
    "mixed: Grüße, Привет, مرحبا, नमस्ते, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, \x00 nul, \u00a0nbsp, \ufffd replacement char",
    f"{BOS}user name=user\nhi{EOS}\n{FUNCTION_CALL}```typescript\nfunctions.f({{\"a\": \"上海\"}})\n```{UNK}",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny_tok")
    train_tiny_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def tok(tiny_dir: Path) -> MiniMaxTokenizer:
    return load_tokenizer(tiny_dir)


def copy_tokenizer(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# --- training ----------------------------------------------------------------------------------------------
def test_training_is_deterministic_and_fast(tiny_dir: Path, tmp_path: Path):
    start = time.perf_counter()
    train_tiny_tokenizer(tmp_path)
    assert time.perf_counter() - start < 3.0
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_training_vocab_size(tmp_path: Path, tok: MiniMaxTokenizer):
    assert tok.vocab_size == 512
    train_tiny_tokenizer(tmp_path, vocab_size=300)
    assert load_tokenizer(tmp_path).vocab_size == 300
    with pytest.raises(ValueError, match="vocab_size"):
        train_tiny_tokenizer(tmp_path, vocab_size=200)


def test_written_tokenizer_config(tiny_dir: Path):
    cfg = json.loads((tiny_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg == {
        "add_prefix_space": False, "bos_token": BOS, "clean_up_tokenization_spaces": False, "eos_token": EOS,
        "model_max_length": 40960000, "tokenizer_class": "GPT2Tokenizer", "unk_token": UNK,
        "chat_template": CHAT_TEMPLATE,
    }
    assert cfg == json.loads(REFERENCE.read_text(encoding="utf-8"))


# --- encode / decode ---------------------------------------------------------------------------------------
def test_special_tokens_are_single_tokens(tok: MiniMaxTokenizer):
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.eos_token_id == tok.token_to_id(EOS) == 1
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.encode(s) == [i]
        assert tok.id_to_token(i) == s
        ids = tok.encode(f"abc{s}xyz")
        assert ids.count(i) == 1 and tok.encode("abc") + [i] + tok.encode("xyz") == ids
    assert tok.id_to_token(10**6) is None and tok.token_to_id("<not a token>") is None


def test_no_automatic_bos(tok: MiniMaxTokenizer):
    assert tok.encode("") == []
    assert tok.token_to_id(BOS) not in tok.encode("hello")


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trip(tok: MiniMaxTokenizer, text: str):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_skip_special_tokens(tok: MiniMaxTokenizer):
    ids = tok.encode(f"{BOS}a{FUNCTION_CALL}b{EOS}")
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    assert tok.decode(ids) == f"{BOS}a{FUNCTION_CALL}b{EOS}"


def test_spaces_between_special_tokens(tok: MiniMaxTokenizer):
    # transformers' slow-tokenizer rule (vLLM's option): special tokens and the text runs between them are joined
    # by one space; nothing changes when special tokens are skipped.
    ids = tok.encode(f"{BOS}a{FUNCTION_CALL}{FUNCTION_CALL}b c{EOS}")
    assert tok.decode(ids, spaces_between_special_tokens=True) == f"{BOS} a {FUNCTION_CALL} {FUNCTION_CALL} b c {EOS}"
    assert tok.decode(ids, skip_special_tokens=True, spaces_between_special_tokens=True) == "ab c"
    assert tok.special_token_ids() == sorted(tok.token_to_id(t) for t in SPECIAL_TOKENS)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tiny_dir: Path, tok: MiniMaxTokenizer, text: str):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_dir))
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False)
    assert tok.eos_token_id == hf.eos_token_id


# --- incremental decoding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("text", TEXTS + [f"{BOS}x{FUNCTION_CALL}{EOS}{FUNCTION_CALL} y 今天{EOS}"])
def test_incremental_decoder_equals_full_decode(tok: MiniMaxTokenizer, text: str, skip: bool, spaced: bool):
    ids = tok.encode(text)
    dec = tok.incremental_decoder(skip_special_tokens=skip, spaces_between_special_tokens=spaced)
    pieces = [dec.step(i) for i in ids]
    assert "".join(pieces) + dec.flush() == tok.decode(ids, skip_special_tokens=skip,
                                                       spaces_between_special_tokens=spaced)
    if "\ufffd" not in text:
        assert not any("\ufffd" in p for p in pieces)  # incomplete UTF-8 was held back, never shown


def test_incremental_decoder_holds_back_partial_characters(tok: MiniMaxTokenizer):
    ids = tok.encode("天气😀")
    # Precondition: the tiny vocabulary splits these characters over several byte tokens.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    dec = tok.incremental_decoder()
    out = [dec.step(i) for i in ids]
    assert "".join(out) == "天气😀" and "" in out and dec.flush() == ""


def test_incremental_decoder_invalid_bytes(tok: MiniMaxTokenizer):
    # Byte tokens that never form a valid character (a lone continuation byte, a truncated lead byte).
    lone = [i for i in range(tok.vocab_size) if tok.decode([i]) == "\ufffd"]
    assert len(lone) >= 2
    for ids in ([lone[0], *tok.encode("a")], [*tok.encode("b"), lone[1]], [lone[0], lone[1]]):
        dec = tok.incremental_decoder()
        assert "".join(dec.step(i) for i in ids) + dec.flush() == tok.decode(ids)


# --- chat template through the tokenizer -------------------------------------------------------------------
def test_apply_chat_template(tok: MiniMaxTokenizer):
    messages = [{"role": "user", "content": "你好"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == f"{BOS}user name=user\n你好{EOS}\n{BOS}ai name=assistant\n"
    assert tok.apply_chat_template(messages) == tok.encode(text)
    assert tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False) == f"{BOS}user name=user\n你好{EOS}\n"


def test_load_reads_tokenizer_config(tiny_dir: Path, tmp_path: Path):
    d = copy_tokenizer(tiny_dir, tmp_path / "ckpt")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ messages[0]['content'][0]['text'] }}!"
    cfg["eos_token"] = {"content": UNK, "special": True}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(d)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi!"
    assert (tok.eos_token, tok.eos_token_id) == (UNK, 2)
    (d / "chat_template.jinja").write_text("file:{{ messages | length }}")  # takes precedence, as in transformers
    assert load_tokenizer(d).apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "file:1"
    # without tokenizer_config.json: the built-in template and tokens
    (d / "tokenizer_config.json").unlink()
    (d / "chat_template.jinja").unlink()
    tok = load_tokenizer(d / "tokenizer.json")
    assert tok.chat_template == CHAT_TEMPLATE and tok.eos_token_id == 1


# --- stop tokens -------------------------------------------------------------------------------------------
def test_stop_token_ids_precedence(tmp_path: Path, tok: MiniMaxTokenizer):
    gen, cfg = tmp_path / "generation_config.json", tmp_path / "config.json"
    assert stop_token_ids(tmp_path) == [200020]
    assert stop_token_ids(tmp_path, tok) == [1]
    cfg.write_text(json.dumps({"eos_token_id": 7}))
    assert stop_token_ids(tmp_path, tok) == [7]
    gen.write_text(json.dumps({"eos_token_id": None}))
    assert stop_token_ids(tmp_path, tok) == [7]
    gen.write_text(json.dumps({"eos_token_id": 200020}))
    assert stop_token_ids(tmp_path, tok) == [200020]
    gen.write_text(json.dumps({"eos_token_id": [5, 6]}))
    assert stop_token_ids(tmp_path, tok) == [5, 6]
    cfg.write_text(json.dumps({"eos_token_id": None}))
    gen.write_text(json.dumps({"do_sample": False}))
    assert stop_token_ids(tmp_path, tok) == [1]


@pytest.mark.parametrize("name, content", [
    ("generation_config.json", "{not json"),
    ("generation_config.json", json.dumps({"eos_token_id": "</s>"})),
    ("config.json", json.dumps({"eos_token_id": []})),
    ("config.json", json.dumps({"eos_token_id": [1, True]})),
])
def test_stop_token_ids_errors(tmp_path: Path, name: str, content: str):
    (tmp_path / name).write_text(content)
    with pytest.raises(CheckpointError, match=name):
        stop_token_ids(tmp_path)


# --- load errors -------------------------------------------------------------------------------------------
def test_missing_tokenizer_json(tmp_path: Path):
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "does_not_exist")


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"version": "1.0"}', b"\xff\xfe garbage"])
def test_corrupt_tokenizer_json(tmp_path: Path, content: bytes):
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("content", [
    "{broken", "[1, 2]", json.dumps({"eos_token": 5}), json.dumps({"chat_template": 3}),
    json.dumps({"chat_template": [{"name": "tool_use", "template": "x"}]}),
])
def test_corrupt_tokenizer_config(tiny_dir: Path, tmp_path: Path, content: str):
    d = copy_tokenizer(tiny_dir, tmp_path)
    (d / "tokenizer_config.json").write_text(content)
    with pytest.raises(CheckpointError, match="tokenizer_config.json"):
        load_tokenizer(d)


def test_named_chat_templates(tiny_dir: Path, tmp_path: Path):
    d = copy_tokenizer(tiny_dir, tmp_path)
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert load_tokenizer(d).chat_template == "D"
