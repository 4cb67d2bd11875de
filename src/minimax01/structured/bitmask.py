"""Token bitmasks: the packed form a grammar library fills (bit `t % 32` of int32 word `t // 32` set = token t
allowed) and its application to the logits rows of constrained requests only."""

from __future__ import annotations

import torch


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [n, vocab_size] from int32 [n, ceil(vocab_size / 32)] (ids past vocab_size are dropped)."""
    bits = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    # [n, W, 32]: (word >> bit) & 1, little-endian within a word as llguidance and xgrammar pack it. The
    # arithmetic shift of a negative word (bit 31 set) keeps bit 31's value after `& 1`, so sign does not matter.
    allowed = (bitmask.unsqueeze(-1) >> bits) & 1
    return allowed.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> torch.Tensor:
    """A copy of float `logits` [B, V] whose rows `rows` have -inf wherever `bitmask` (int32 [len(rows), W], on any
    device) disallows the token. The other rows are not touched, so an unconstrained request's logits stay
    bit-identical whatever its neighbours in the batch ask for."""
    out = logits.clone()
    if not rows:
        return out
    idx = torch.tensor(rows, dtype=torch.long, device=logits.device)
    allowed = unpack_bitmask(bitmask.to(logits.device, non_blocking=True), logits.shape[1])
    out.index_copy_(0, idx, out.index_select(0, idx).masked_fill(~allowed, float("-inf")))
    return out
