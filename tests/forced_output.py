"""Checkpoints whose weights force one output text: a bigram model, so that tool-call and reasoning text in the
end-to-end tests is really produced by the model (sampled, detokenized, parsed) and not injected.

How: every attention output projection and every expert's down projection is zeroed, so each layer's residual
branch adds nothing and the final hidden state is a function of the current token alone. The target text is cut
into chunks that each occur once, each chunk is added to the tokenizer as a (non-special) token, and `lm_head`
is solved so that the generation prompt's last token predicts the first chunk, each chunk the next one, the last
chunk EOS — with a logit margin of 30, so that even sampling at temperature 1 follows the chain. The markers
(`<think>`, `<tool_calls>`, ...) are cut across chunks, so the parsers see them split over several deltas.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

MARGIN = 30.0
CHUNK = 5  # characters per chunk; a chunk that already occurred is grown until it is new


def unique_chunks(text: str) -> list[str]:
    chunks: list[str] = []
    pos = 0
    while pos < len(text):
        end = min(pos + CHUNK, len(text))
        while text[pos:end] in chunks and end < len(text):
            end += 1
        if text[pos:end] in chunks:  # only possible at the very end: merge into the previous chunk
            chunks[-1] += text[pos:end]
        else:
            chunks.append(text[pos:end])
        pos = end
    return chunks


def write_forced_checkpoint(out: Path, target: str, generation_prompt: str, *,
                            chat_template: str | None = None, generation_config: dict | None = None) -> Path:
    """A checkpoint in `out` that answers any chat prompt ending with `generation_prompt` with `target`, then
    EOS. `chat_template` replaces the tokenizer_config.json template (None: Text-01's built-in one)."""
    from tokenizers import AddedToken, Tokenizer

    from minimax01.causal_lm import MiniMaxForCausalLM
    from minimax01.model.model import init_random_weights_
    from minimax01.special_tokens import EOS
    from minimax01.tiny import tiny_config
    from minimax01.tokenizer import load_tokenizer, train_tiny_tokenizer

    out.mkdir(parents=True)
    train_tiny_tokenizer(out)
    chunks = unique_chunks(target)
    assert "".join(chunks) == target
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    raw.add_tokens([AddedToken(c, special=False, normalized=False) for c in chunks])
    raw.save(str(out / "tokenizer.json"))
    if chat_template is not None:
        cfg_file = out / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        cfg["chat_template"] = chat_template
        cfg_file.write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    tok = load_tokenizer(out)
    chain = [tok.encode(generation_prompt)[-1]] + [tok.token_to_id(c) for c in chunks] + [tok.token_to_id(EOS)]
    sources = chain[:-1]
    assert len(set(sources)) == len(sources), "every source token must have one successor"

    model = MiniMaxForCausalLM(tiny_config(tok.vocab_size, layers=8)).to(torch.float32)
    init_random_weights_(model, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "out_proj.weight", "experts.w2")):
                p.zero_()  # the residual branches add nothing: the last hidden state depends on the token alone
        hidden: list[torch.Tensor] = []
        hook = model.lm_head.register_forward_hook(lambda _m, inp, _o: hidden.append(inp[0].detach().clone()))
        for token in sources:
            model(torch.tensor([[token]]))
        hook.remove()
        states = torch.cat([h.reshape(-1, h.shape[-1])[-1:] for h in hidden]).double()  # [sources, hidden]
        wanted = torch.zeros(len(sources), tok.vocab_size, dtype=torch.float64)
        wanted[torch.arange(len(sources)), torch.tensor(chain[1:])] = MARGIN
        model.lm_head.weight.copy_(torch.linalg.lstsq(states, wanted).solution.T.float())
    model.save_pretrained(out)
    gen = {"eos_token_id": tok.token_to_id(EOS), **(generation_config or {})}
    (out / "generation_config.json").write_text(json.dumps(gen), encoding="utf-8")
    return out
