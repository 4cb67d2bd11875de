"""MiniMax-Text-01 tokenizer: a thin typed wrapper around a `tokenizers` byte-level BPE.

Also: the raw bytes of one token (byte-level detokenization), stop-token lookup from a checkpoint directory,
incremental (streaming) detokenization, and a tiny deterministic tokenizer for tests and tiny checkpoints.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from functools import lru_cache
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from minimax01.chat.template import CHAT_TEMPLATE, render_chat
from minimax01.errors import CheckpointError
from minimax01.special_tokens import BOS, DEFAULT_EOS_TOKEN_ID, EOS, SPECIAL_TOKENS, UNK

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where newer transformers versions save the template


def _read_json(path: Path) -> Any:
    """Parsed JSON of `path`, or CheckpointError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def _token_content(value: Any, default: str, path: Path, key: str) -> str:
    # tokenizer_config.json stores special tokens as strings or as serialised AddedToken dicts.
    if value is None:
        return default
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise CheckpointError(f"{path}: {key} must be a string or an object with 'content'")


def _chat_template_of(config: dict[str, Any], path: Path) -> str | None:
    tpl = config.get("chat_template")
    if tpl is None or isinstance(tpl, str):
        return tpl
    if isinstance(tpl, list):  # named templates: [{"name": "default", "template": ...}, ...]
        for entry in tpl:
            if isinstance(entry, dict) and entry.get("name") == "default" and isinstance(entry.get("template"), str):
                return entry["template"]
    raise CheckpointError(f"{path}: chat_template must be a string or a list with a 'default' entry")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet (GPT-2 scheme): printable bytes map to themselves, the others to
    U+0100 upwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class MiniMaxTokenizer:
    """Encode/decode and chat templating. Nothing is added automatically: the template writes every marker."""

    def __init__(self, tokenizer: Tokenizer, *, chat_template: str = CHAT_TEMPLATE,
                 bos_token: str = BOS, eos_token: str = EOS, unk_token: str = UNK) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.unk_token = unk_token
        self.eos_token_id: int | None = tokenizer.token_to_id(eos_token)
        self._special: frozenset[int] | None = None  # special_token_ids(), read once

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it become their single ids; no BOS is prepended."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               spaces_between_special_tokens: bool = False) -> str:
        """Text of `ids`. Keep skip_special_tokens False where tool calls matter: `<function_call>` is special.
        spaces_between_special_tokens: join the special tokens kept and the text runs between them with one
        space each (transformers' slow-tokenizer and vLLM's option of that name)."""
        ids = list(ids)
        if not spaces_between_special_tokens or skip_special_tokens:
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        special = self._special_ids()
        pieces: list[str] = []
        run: list[int] = []  # ids of the current text run
        for token_id in ids + [-1]:  # -1: end marker that flushes the last run
            if token_id in special or token_id == -1:
                if run:
                    pieces.append(self.tokenizer.decode(run, skip_special_tokens=False))
                    run = []
                if token_id != -1:
                    pieces.append(self.tokenizer.decode([token_id], skip_special_tokens=False))
            else:
                run.append(token_id)
        return " ".join(pieces)

    def special_token_ids(self) -> list[int]:
        """Ids of the special tokens (BOS, EOS, `<function_call>`, ...), ascending."""
        return sorted(self._special_ids())

    def _special_ids(self) -> frozenset[int]:
        if self._special is None:
            decoder = self.tokenizer.get_added_tokens_decoder()
            self._special = frozenset(i for i, tok in decoder.items() if tok.special)
        return self._special

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, None if unknown."""
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string (byte-level form) of an id, None if out of range."""
        return self.tokenizer.id_to_token(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a lone token may hold part of a UTF-8 character, which `decode` would
        turn into U+FFFD)."""
        piece = self.id_to_token(token_id) or ""
        table = _byte_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
        return piece.encode("utf-8")  # special tokens added as whole strings

    def apply_chat_template(self, messages: Any, tools: Any = None, add_generation_prompt: bool = True,
                            tokenize: bool = True) -> list[int] | str:
        """Renders messages (OpenAI-style accepted, see chat.messages); token ids unless tokenize=False."""
        text = render_chat(messages, tools, add_generation_prompt, chat_template=self.chat_template)
        return self.encode(text) if tokenize else text

    def incremental_decoder(self, skip_special_tokens: bool = False,
                            spaces_between_special_tokens: bool = False) -> IncrementalDecoder:
        """A fresh IncrementalDecoder for one generated sequence (options as in `decode`)."""
        return IncrementalDecoder(self, skip_special_tokens, spaces_between_special_tokens)


class IncrementalDecoder:
    """Streaming detokenization: `step(id)` returns only the newly completed text.

    Pending tokens are decoded together and emitted once their text does not end in U+FFFD, i.e. once no
    UTF-8 sequence is left incomplete. Emitting a decoded chunk on its own is exact for byte-level BPE (the
    MiniMax/GPT-2 decoder has no context-dependent rules such as dropped leading spaces), and UTF-8 is
    self-synchronising, so later bytes never change a completed character. The concatenation of all steps
    plus `flush()` equals `decode` of all ids (with the same options).

    With `spaces_between_special_tokens` (and special tokens kept), a special token is a piece of its own: the
    text run before it is emitted first, and one space goes between two non-empty pieces, as `decode` joins them.
    """

    def __init__(self, tokenizer: MiniMaxTokenizer, skip_special_tokens: bool = False,
                 spaces_between_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._spaced = spaces_between_special_tokens and not skip_special_tokens
        self._special = frozenset(tokenizer.special_token_ids()) if self._spaced else frozenset()
        self._pending: list[int] = []  # ids whose text has not been emitted yet
        self._emitted = False  # a piece was emitted (a later piece is preceded by a space when spaced)
        self._last_special = False  # the last piece was a special token

    def step(self, token_id: int) -> str:
        """Adds one token; returns the new text (possibly "" while a character is incomplete)."""
        if token_id in self._special:
            run = self.flush()  # the text run before the special token ends here
            return run + self._piece(self._tok.decode([token_id]), special=True)
        self._pending.append(token_id)
        text = self._tok.decode(self._pending, self._skip)
        if not text or text.endswith("\ufffd"):
            return ""
        self._pending = []
        return self._piece(text, special=False)

    def flush(self) -> str:
        """Text still held back (an incomplete or invalid byte sequence at the end, shown as U+FFFD)."""
        text = self._tok.decode(self._pending, self._skip) if self._pending else ""
        self._pending = []
        return self._piece(text, special=False)

    def _piece(self, text: str, special: bool) -> str:
        """`text` with the space that joins it to the previous piece: between a special token and anything."""
        if not text or not self._spaced:
            return text
        joined = " " + text if self._emitted and (special or self._last_special) else text
        self._emitted, self._last_special = True, special
        return joined


def load_tokenizer(path: str | os.PathLike[str]) -> MiniMaxTokenizer:
    """Loads `tokenizer.json` (+ optional `tokenizer_config.json` / `chat_template.jinja`) from a checkpoint dir.

    `path` may also be the tokenizer.json file itself. Raises CheckpointError naming the missing/corrupt file.
    """
    p = Path(path)
    tok_file = p if p.is_file() else p / TOKENIZER_FILE
    directory = tok_file.parent
    if not tok_file.is_file():
        raise CheckpointError(f"{tok_file}: tokenizer file not found")
    try:
        tokenizer = Tokenizer.from_file(str(tok_file))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise CheckpointError(f"{tok_file}: not a valid tokenizers file ({e})") from e

    kwargs: dict[str, Any] = {}
    cfg_file = directory / TOKENIZER_CONFIG_FILE
    if cfg_file.is_file():
        cfg = _read_json(cfg_file)
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{cfg_file}: expected a JSON object")
        for key, default in (("bos_token", BOS), ("eos_token", EOS), ("unk_token", UNK)):
            kwargs[key] = _token_content(cfg.get(key), default, cfg_file, key)
    template = checkpoint_chat_template(directory)
    if template is not None:
        kwargs["chat_template"] = template
    return MiniMaxTokenizer(tokenizer, **kwargs)


def checkpoint_chat_template(directory: str | os.PathLike[str]) -> str | None:
    """The chat template a checkpoint directory ships (`chat_template.jinja`, else tokenizer_config.json's
    `chat_template`), None when it has none."""
    tpl_file = Path(directory) / CHAT_TEMPLATE_FILE
    if tpl_file.is_file():  # as in transformers, a separate template file takes precedence
        try:
            return tpl_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{tpl_file}: cannot read ({e})") from e
    cfg_file = Path(directory) / TOKENIZER_CONFIG_FILE
    if not cfg_file.is_file():
        return None
    cfg = _read_json(cfg_file)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object")
    return _chat_template_of(cfg, cfg_file)


def _eos_ids(value: Any, path: Path) -> list[int] | None:
    if value is None:
        return None
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointError(f"{path}: eos_token_id must be a non-negative int or a non-empty list of them")
    return list(ids)


def stop_token_ids(model_dir: str | os.PathLike[str], tokenizer: MiniMaxTokenizer | None = None) -> list[int]:
    """Token ids that end generation.

    Precedence: generation_config.json `eos_token_id` (int or list), then config.json `eos_token_id`, then the
    tokenizer's eos token, then 200020 (`<end_of_sentence>` of the released tokenizer).
    """
    directory = Path(model_dir)
    for name in ("generation_config.json", "config.json"):
        f = directory / name
        if f.is_file():
            cfg = _read_json(f)
            ids = _eos_ids(cfg.get("eos_token_id") if isinstance(cfg, dict) else None, f)
            if ids is not None:
                return ids
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return [tokenizer.eos_token_id]
    return [DEFAULT_EOS_TOKEN_ID]


# Standard-library modules whose source is the training text: ships with every Python, no network needed.
_TRAINING_MODULES = ("json.decoder", "json.encoder", "textwrap", "string", "shlex", "fnmatch")
# A little non-ASCII text so that multi-byte characters get merges and are exercised by tests.
_UNICODE_TEXT = (
    "今天上海的天气怎么样？北京很冷。你好，世界！こんにちは世界。안녕하세요. "
    "Grüße aus Köln, café, naïve, déjà vu. Привет, мир! Γειά σου κόσμε. 😀 🚀 ✓ → ∑ π ≈ 3.14159\n"
)


def _training_text() -> list[str]:
    import importlib

    texts = [inspect.getsource(importlib.import_module(name)) for name in _TRAINING_MODULES]
    return texts + [_UNICODE_TEXT] * 20


def train_tiny_tokenizer(out_dir: str | os.PathLike[str], vocab_size: int = 512) -> None:
    """Trains a small byte-level BPE on stdlib source text and writes tokenizer.json + tokenizer_config.json.

    Deterministic for a given Python/tokenizers version. MiniMax's special tokens get ids 0..4 in SPECIAL_TOKENS
    order; tokenizer_config.json carries the reference fields (chat template included).
    """
    min_size = 256 + len(SPECIAL_TOKENS) + 1
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (256 bytes + special tokens + one merge)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # as GPT2Tokenizer, add_prefix_space=false
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / TOKENIZER_FILE))
    config = {  # the fields (and order) of MiniMax-Text-01's tokenizer_config.json
        "add_prefix_space": False,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": 40960000,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": UNK,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
