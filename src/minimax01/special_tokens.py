"""The special-token strings of the MiniMax-Text-01 tokenizer: the one place they are spelled out.

The chat template writes every one of them itself (the tokenizer adds nothing automatically), and each is a
single token id in the released vocabulary.
"""

from __future__ import annotations

BOS = "<beginning_of_sentence>"
EOS = "<end_of_sentence>"
UNK = "<end_of_document>"
FUNCTION_CALL = "<function_call>"  # opens a native tool call (see chat/function_call.py)
BEGIN_OF_DOCUMENT = "<begin_of_document>"
# In this order they get ids 0..4 in the tiny tokenizer (tokenizer.train_tiny_tokenizer).
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, UNK, FUNCTION_CALL, BEGIN_OF_DOCUMENT)
DEFAULT_EOS_TOKEN_ID = 200020  # `<end_of_sentence>` in the released tokenizer (MiniMax quickstart)
