"""Triton paged prefill attention of the softmax layers: a chunk of new queries per sequence (several sequences
in one launch) attends causally to that sequence's whole context, read in place from the paged KV pool through
its block table (no gather copy). Torch reference: attention_ref.paged_attention_ref.

Alignment: a sequence with n new queries and L cached keys (its new ones included) puts query i at position
L - n + i, which sees keys 0..L - n + i (the causal diagonal aligned to the lower right).

Tiles: one program per (query tile, kv head). A tile's BM rows are BQ = BM / G consecutive query tokens × the
G = H / KVH query heads of that kv head (row r: token r // G, head r % G), so each K/V tile is loaded once for
the whole GQA group and the dots keep tensor-core shapes (BM = 128 with G = 8: 16 tokens × 8 heads). The key
range splits in two loops: tiles every row of the query tile sees in full (no mask arithmetic), then the few
tiles across the causal diagonal (masked); tiles past the diagonal are never visited. Softmax statistics (max,
sum) and the output accumulator are fp32; p is rounded to the input dtype before P·V, as flash kernels do.

Paging: token t of a sequence sits in pool block block_table[slot, t // BS] at offset t % BS. When BN divides
the block size a K/V tile lies inside one block: one scalar table lookup per tile; otherwise each row looks its
block up (any block size works).

The host builds the tile schedule (sequence, first query of each tile) from the host lists a prefill step has,
heaviest tiles (longest key range) first so the tail of the launch is short tiles.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from minimax01.kernels.triton_common import cast, dot, interpreting

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class PrefillConfig:
    """Tile shape and pipelining of one launch. BM rows = query tokens × GQA group; BN keys per K/V tile."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    # Full K/V tiles through TMA descriptors where BN divides the block size (CUDA only; measured: no gain over
    # block_ahead, see CONFIGS).
    tma: bool = False
    # The full-tile key loop as a warp-specialized loop (producer warps load K/V, consumer warps run the dots and
    # the softmax: Triton's Hopper/Blackwell pipelining). Needs a Triton whose tl.range takes the keyword.
    warp_specialize: bool = False
    # Issue the V tile's load before Q·Kᵀ instead of after the softmax statistics, so that its latency hides
    # under the first dot and the exponentials (the FA3 order). Same arithmetic, same result.
    v_early: bool = False
    # The row max taken on the raw products Q·Kᵀ and scaled once per row (scaling is monotone, so the max is
    # the same bits), the scale then applied inside the exponent's argument (s·c − m, one FMA per element)
    # instead of a multiply per element before the max. Differs from the default by at most the rounding of
    # that argument where the compiler had not fused the two already.
    exp_fma: bool = False
    # Full tiles: look the next tile's pool block(s) up one iteration ahead, so that the K/V loads do not wait
    # on a block-table load of their own iteration.
    block_ahead: bool = False


# Keyed by (head_dim, dtype). 16-bit D = 128 is the model's shape. Measured on an H200 (bench/attention_prefill.py
# --sweep, bench/results/attention-prefill-sweep-2026-11-30*): 256-row tiles (32 query tokens x 8 heads, 16 warps)
# with the block lookup a tile ahead reach 487 TFLOP/s at a 128 K context against 350 for the previous 128 x 64,
# 8-warp tiles; the scale folded into the exponent's FMA adds 1.6-2.4 % (495 / 489 / 490 TFLOP/s at 32 K / 128 K
# / 1 M). TMA loads (at best 464), warp specialization (the same binary with this Triton), the early V load,
# BN = 128 with these tiles (registers spill: 38 TFLOP/s), a lazy rescale of the accumulator (only when a row's
# max grew: -8 %) and Q·Kᵀ issued a tile ahead (-25 to -60 %) did not beat it; the last two were removed.
# fp32 tiles hold twice the bytes: halved.
CONFIGS: dict[tuple[int, torch.dtype], PrefillConfig] = {
    (128, torch.bfloat16): PrefillConfig(256, 64, 16, 3, exp_fma=True, block_ahead=True),
    (128, torch.float16): PrefillConfig(256, 64, 16, 3, exp_fma=True, block_ahead=True),
    (128, torch.float32): PrefillConfig(64, 32, 4, 2),
}
DEFAULT_CONFIG = PrefillConfig(64, 32, 4, 2)  # other head dims (tests): small tiles


def config_for(head_dim: int, dtype: torch.dtype) -> PrefillConfig:
    return CONFIGS.get((head_dim, dtype), DEFAULT_CONFIG)


@triton.jit
def _kv_rows(bt, t0, blk, offs_n, stride_kblk, stride_ktok, BS: tl.constexpr, BN: tl.constexpr,
             BLK: tl.constexpr):
    """Pool offsets [BN] (int64: pools pass 2^31 elements at 1 M tokens) of tokens t0 + offs_n of a sequence
    whose block-table row starts at `bt`. Callers mask tokens past the sequence. BLK: `blk` holds the pool
    block(s), looked up by the caller ahead of time: the tile's one block where BN divides BS, else each
    token's [BN]."""
    if BS % BN == 0:  # t0 is a multiple of BN: the tile lies in one block
        if not BLK:
            blk = tl.load(bt + t0 // BS)
        return blk.to(tl.int64) * stride_kblk + ((t0 % BS) + offs_n).to(tl.int64) * stride_ktok
    tok = t0 + offs_n
    if not BLK:
        blk = tl.load(bt + tok // BS)  # pads past the table's row only for masked tokens
    return blk.to(tl.int64) * stride_kblk + (tok % BS).to(tl.int64) * stride_ktok


@triton.jit
def _tile_blocks(bt, t0, offs_n, BS: tl.constexpr, BN: tl.constexpr):
    """Pool block of tokens t0..t0+BN (inside the sequence): one scalar where BN divides BS, else [BN]."""
    if BS % BN == 0:  # one return: Triton types every return of a function alike
        blk = tl.load(bt + t0 // BS)
    else:
        blk = tl.load(bt + (t0 + offs_n) // BS)
    return blk


@triton.jit
def _load_tile(base, desc, bt, t0, blk, kvh, offs_n, offs_d, L, stride_blk, stride_tok,
               KEYS: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr, BS: tl.constexpr, BN: tl.constexpr,
               D: tl.constexpr, BLK: tl.constexpr):
    """Tokens t0..t0+BN of one kv head: Kᵀ [D, BN] (KEYS, as the product takes it) or V [BN, D]. MASKED: tokens
    ≥ L are not loaded (zeros). TMA (full tiles, BN dividing BS): rows blk·BS + t0 % BS .. + BN of the pool seen
    as [blocks·BS, KVH·D]."""
    if TMA:
        if not BLK:
            blk = tl.load(bt + t0 // BS)
        tile = desc.load([blk * BS + t0 % BS, kvh * D])  # [BN, D]
        if KEYS:
            tile = tl.trans(tile)
    elif MASKED:
        valid = t0 + offs_n < L
        rows = _kv_rows(bt, t0, blk, tl.where(valid, offs_n, 0), stride_blk, stride_tok, BS, BN, BLK)
        if KEYS:
            tile = tl.load(base + rows[None, :] + offs_d[:, None], mask=valid[None, :], other=0.0)
        else:
            tile = tl.load(base + rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
    else:
        rows = _kv_rows(bt, t0, blk, offs_n, stride_blk, stride_tok, BS, BN, BLK)
        if KEYS:
            tile = tl.load(base + rows[None, :] + offs_d[:, None])
        else:
            tile = tl.load(base + rows[:, None] + offs_d[None, :])
    return tile


@triton.jit
def _attend_tile(q, acc, m, l, k_base, v_base, k_desc, v_desc, bt, t0, blk, kvh, pos, L, offs_n, offs_d, scale_log2,
                 stride_kblk, stride_ktok, stride_vblk, stride_vtok,
                 MASKED: tl.constexpr, TMA: tl.constexpr, V_EARLY: tl.constexpr, EXP_FMA: tl.constexpr,
                 BS: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, BLK: tl.constexpr, INTERPRET: tl.constexpr):
    """One online-softmax step over keys t0..t0+BN of q [BM, D] (rows at positions pos [BM]). MASKED: the
    tile crosses the diagonal or the context end (keys > pos get −inf, keys ≥ L are not loaded)."""
    dt = q.dtype  # K/V are used in the query's dtype, as the torch path casts them
    kT = _load_tile(k_base, k_desc, bt, t0, blk, kvh, offs_n, offs_d, L, stride_kblk, stride_ktok,
                    KEYS=True, MASKED=MASKED, TMA=TMA, BS=BS, BN=BN, D=D, BLK=BLK).to(dt)  # [D, BN]
    if V_EARLY:
        vt = _load_tile(v_base, v_desc, bt, t0, blk, kvh, offs_n, offs_d, L, stride_vblk, stride_vtok,
                        KEYS=False, MASKED=MASKED, TMA=TMA, BS=BS, BN=BN, D=D, BLK=BLK).to(dt)  # [BN, D]
    s = dot(q, kT, None, INTERPRET)  # [BM, BN] fp32
    if not EXP_FMA:
        s = s * scale_log2  # log2 units
    if MASKED:
        s = tl.where((t0 + offs_n)[None, :] <= pos[:, None], s, float("-inf"))
    if EXP_FMA:
        m_new = tl.maximum(m, tl.max(s, 1) * scale_log2)
        p = tl.exp2(tl.fma(s, scale_log2, -m_new[:, None]))  # explicit: whatever the compiler's fp fusion
    else:
        m_new = tl.maximum(m, tl.max(s, 1))  # finite: every row saw key 0 in the first tile it visited
        p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m - m_new)
    l = l * alpha + tl.sum(p, 1)
    if not V_EARLY:
        vt = _load_tile(v_base, v_desc, bt, t0, blk, kvh, offs_n, offs_d, L, stride_vblk, stride_vtok,
                        KEYS=False, MASKED=MASKED, TMA=TMA, BS=BS, BN=BN, D=D, BLK=BLK).to(dt)
    acc = dot(cast(p, dt, INTERPRET), vt, acc * alpha[:, None], INTERPRET)
    return acc, m_new, l


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, k_desc, v_desc, o_ptr, bt_ptr, slot_ptr, cu_ptr, len_ptr, tile_seq_ptr, tile_q0_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kblk, stride_ktok, stride_kh, stride_vblk, stride_vtok, stride_vh, stride_bt,
    scale_log2,
    G: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr, TMA: tl.constexpr,
    WS: tl.constexpr, V_EARLY: tl.constexpr, EXP_FMA: tl.constexpr, AHEAD: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.load(tile_seq_ptr + tile)
    i0 = tl.load(tile_q0_ptr + tile)  # first query of the tile, counted within its sequence
    q_lo = tl.load(cu_ptr + b)
    n = tl.load(cu_ptr + b + 1) - q_lo  # the sequence's new queries
    L = tl.load(len_ptr + b)  # its keys, the new ones included
    slot = tl.load(slot_ptr + b).to(tl.int64)
    BQ: tl.constexpr = BM // G

    offs_m = tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BN)
    qi = i0 + offs_m // G  # [BM] query index within the sequence
    head = kvh * G + offs_m % G  # [BM] query head
    row_ok = qi < n
    pos = L - n + qi  # [BM] position of each row's query
    q_rows = (q_lo + qi).to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)  # [BM, D]

    m = tl.full([BM], float("-inf"), tl.float32)
    l = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    bt = bt_ptr + slot * stride_bt
    k_base = k_ptr + kvh * stride_kh
    v_base = v_ptr + kvh * stride_vh
    first = L - n + i0  # position of the tile's first query: keys ≤ first are visible to every row
    full_end = ((first + 1) // BN) * BN
    last = tl.minimum(first + BQ - 1, L - 1)  # the last query the tile holds (rows past n are not stored)
    # AHEAD: each full tile's pool block(s) are looked up one iteration ahead, so that the K/V addresses hang on
    # a loop-carried value and not on a load of the same iteration (a chain the pipeliner serializes). The last
    # iteration re-reads the last tile's entries: no read past the sequence's table row.
    blk_next = _tile_blocks(bt, 0, offs_n, BS, BN)
    for t0 in tl.range(0, full_end, BN, warp_specialize=WS):  # WS=False: the plain software-pipelined loop
        blk = blk_next
        if AHEAD:
            blk_next = _tile_blocks(bt, tl.minimum(t0 + BN, full_end - BN), offs_n, BS, BN)
        acc, m, l = _attend_tile(q, acc, m, l, k_base, v_base, k_desc, v_desc, bt, t0, blk, kvh, pos, L, offs_n,
                                 offs_d, scale_log2, stride_kblk, stride_ktok, stride_vblk, stride_vtok,
                                 MASKED=False, TMA=TMA, V_EARLY=V_EARLY, EXP_FMA=EXP_FMA, BS=BS, BN=BN, D=D,
                                 BLK=AHEAD, INTERPRET=INTERPRET)
    for t0 in range(full_end, last + 1, BN):
        acc, m, l = _attend_tile(q, acc, m, l, k_base, v_base, k_desc, v_desc, bt, t0, 0, kvh, pos, L, offs_n, offs_d,
                                 scale_log2, stride_kblk, stride_ktok, stride_vblk, stride_vtok,
                                 MASKED=True, TMA=False, V_EARLY=V_EARLY, EXP_FMA=EXP_FMA, BS=BS, BN=BN, D=D,
                                 BLK=False, INTERPRET=INTERPRET)
    o = acc / l[:, None]
    o_rows = (q_lo + qi).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(o_ptr + o_rows[:, None] + offs_d[None, :], cast(o, o_ptr.dtype.element_ty, INTERPRET),
             mask=row_ok[:, None])


def supported(heads: int, kv_heads: int, head_dim: int, config: PrefillConfig) -> bool:
    """Power-of-two head dims and tile sides ≥ 16 (tl.arange / tl.dot), a power-of-two GQA group that divides BM
    into whole query tokens (the model: G = 8, BM = 128), and a Triton that has what the config asks for."""
    g = heads // kv_heads if kv_heads and heads % kv_heads == 0 else 0
    return (head_dim >= 16 and _pow2(head_dim) and _pow2(g) and config.block_m % g == 0
            and all(x >= 16 and _pow2(x) for x in (config.block_m, config.block_n))
            and (not config.warp_specialize or _range_takes("warp_specialize")))


@functools.lru_cache(maxsize=None)
def _range_takes(keyword: str) -> bool:
    """Whether this Triton's tl.range has `keyword` (warp_specialize: Triton ≥ 3.4)."""
    return keyword in inspect.signature(tl.range.__init__).parameters


def tma_applies(config: PrefillConfig, block_size: int, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether a launch with `config` reads its full tiles through TMA: asked for, compiled (not the interpreter),
    a BN-token tile inside one pool block, and pools a descriptor can describe. Otherwise pointer loads."""
    return (config.tma and not interpreting() and block_size % config.block_n == 0 and k_cache.is_contiguous()
            and v_cache.is_contiguous())


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def tile_schedule(cu_seqlens: list[int], seq_lens: list[int], tokens_per_tile: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence [tiles] int32, first query [tiles] int32) of every query tile, heaviest first: a tile's work
    is its last query's key count."""
    tiles = []
    for b, (lo, hi, L) in enumerate(zip(cu_seqlens, cu_seqlens[1:], seq_lens)):
        n = hi - lo
        tiles += [(L - n + min(i + tokens_per_tile, n), b, i) for i in range(0, n, tokens_per_tile)]
    tiles.sort(reverse=True)
    sched = torch.tensor([[b, i] for _, b, i in tiles], dtype=torch.int32).reshape(-1, 2).t().contiguous()
    sched = sched.to(device, non_blocking=True)
    return sched[0], sched[1]


def prefill(
    q: torch.Tensor,  # [T, H, D] new queries of all sequences after RoPE, last dim contiguous
    k_cache: torch.Tensor,  # [blocks, BS, KVH, D] one layer's key pool, this step's keys written
    v_cache: torch.Tensor,  # [blocks, BS, KVH, D]
    block_tables: torch.Tensor,  # [slots, max_blocks] int32: pool block of each slot's i-th block
    slots: torch.Tensor,  # [B] int64 slot of each sequence (on q's device)
    cu_seqlens: list[int],  # [B+1] boundaries of each sequence's queries in T
    seq_lens: list[int],  # [B] keys of each sequence, its new queries included (≥ its query count)
    scale: float,
    config: PrefillConfig | None = None,
) -> torch.Tensor:
    """Returns o [T, H, D] in q.dtype; query head h attends kv head h // (H / KVH). A sequence without queries
    gets no tiles."""
    _, H, D = q.shape
    _, BS, KVH, _ = k_cache.shape
    config = config or config_for(D, q.dtype)
    if not supported(H, KVH, D, config):
        raise ValueError(f"unsupported prefill attention shape: H={H}, KVH={KVH}, D={D}, {config}")
    for t in (q, k_cache, v_cache):
        if t.stride(-1) != 1:
            raise ValueError("q and the KV pools need a contiguous last dim")
    G = H // KVH
    out = torch.empty_like(q)
    tile_seq, tile_q0 = tile_schedule(cu_seqlens, seq_lens, config.block_m // G, q.device)
    if tile_seq.numel() == 0:
        return out
    dev = q.device
    interp = interpreting()
    tma = tma_applies(config, BS, k_cache, v_cache)
    k_desc, v_desc = k_cache, v_cache  # unused placeholders without TMA
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        # [blocks·BS, KVH·D] views: a BN-token tile inside one block is BN consecutive rows of them.
        k_desc, v_desc = (TensorDescriptor.from_tensor(c.view(-1, KVH * D), [config.block_n, D])
                          for c in (k_cache, v_cache))
    cu_t = torch.tensor(cu_seqlens, dtype=torch.int32).to(dev, non_blocking=True)
    lens_t = torch.tensor(seq_lens, dtype=torch.int32).to(dev, non_blocking=True)
    _prefill_kernel[(tile_seq.numel(), KVH)](  # kv head slowest: concurrent programs share its K/V in L2
        q, k_cache, v_cache, k_desc, v_desc, out, block_tables, slots, cu_t, lens_t, tile_seq, tile_q0,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), block_tables.stride(0),
        scale * LOG2E,
        G=G, D=D, BM=config.block_m, BN=config.block_n, BS=BS, TMA=tma, WS=config.warp_specialize,
        V_EARLY=config.v_early, EXP_FMA=config.exp_fma, AHEAD=config.block_ahead,
        INTERPRET=interp,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out
