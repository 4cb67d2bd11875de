"""Configuration sweep of the paged prefill attention kernel in one GPU run (`attention_prefill.py --sweep`).

Shape: the model's softmax layer (64 query heads, 8 kv heads, D = 128, bf16, 64-token blocks scattered over the
pool), one sequence, its last 8192 queries at the end of a 128 K context. Every candidate PrefillConfig is timed
there (compile or launch errors are recorded and the sweep goes on) and its output compared with the default
config's (‖Δ‖/‖default‖, max |Δ|), so that a fast but wrong config cannot win; q is scaled ×4 (exact in bf16) so
that the softmax is peaked and a missed or misplaced key tile shows. The fastest correct configs and the default
are then timed again at 32 K and 1 M (compiled already: seconds), and the winner is the lowest mean time relative to the
default over the contexts it was timed at. A config whose compiled binary equals an earlier one's (an option
this Triton ignores, a pipeline depth the pipeliner caps) is recorded as such and not timed again.

Comparison rows: torch SDPA on the same shape with the KV gathered contiguous and repeated to the 64 heads (the
gather is not timed), one row per backend that runs: flash and efficient with a lower-right causal bias (torch
routes that bias to these two only); every backend also as two calls — the prefix without a mask plus the
square causal diagonal (upper-left = lower-right there) — whose summed time lacks only the merge of the two
softmaxes (cuDNN runs only this way). They show what a library kernel reaches on this GPU.

FLOPs: 4·D·H·Σ visible keys (attention_prefill.tflops); fraction of the bf16 matmul peak measured in the run.
Order: pointer-load configs first, TMA next, so that a config that faults the device loses only the rows after
it (results are written after every row); then the 1 M finalists, the SDPA rows, and last the warp-specialized
configs (the likeliest to miscompile). A watchdog ends a hung run after MAX_S.

    PYTHONPATH=src python bench/attention_prefill.py --sweep            # one H200: about 3 minutes
    PYTHONPATH=src python bench/attention_prefill.py --sweep --smoke    # CPU, tiny shapes, interpreter

Writes bench/results/attention-prefill-sweep-<date>.{json,md} and prints the CONFIGS line of the winner.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import hashlib
import time
from collections.abc import Callable
from typing import Any

import torch
from attention_prefill import CHUNK, DEV, DTYPE, KVH, SMOKE, Config, Context, D, H, prefill, tflops, timed_ms
from common import bench, environment, write_results

from minimax01.kernels.attention_ref import paged_attention_ref

if SMOKE:
    CONTEXTS = [96, 192]  # the sweep's context, then the one the finalists are timed at too
    CANDIDATES = [Config(16, 16, 4, 1), Config(16, 32, 4, 1, block_ahead=True),
                  Config(32, 16, 4, 1, v_early=True, exp_fma=True), Config(16, 16, 4, 1, tma=True)]
    LAST = [Config(16, 16, 4, 1, warp_specialize=True)]
else:
    CONTEXTS = [131072, 32768, 1048576]
    # The first sweep (bench/results/attention-prefill-sweep-2026-11-30) settled the tile sides (256 x 64, 16 warps)
    # and the block lookup a tile ahead; the second (…-sweep-2-…) tried the per-tile work on top of them (the
    # scale in the exponent's FMA won; a lazy rescale and Q·Kᵀ a tile ahead lost and were removed). This list:
    # the second's candidates that the kernel still has.
    A = dict(block_ahead=True)
    CANDIDATES = [
        Config(256, 64, 16, 3, **A), Config(256, 64, 16, 3, exp_fma=True, **A), Config(256, 64, 16, 4, exp_fma=True, **A),
        Config(256, 64, 16, 3, v_early=True, exp_fma=True, **A), Config(256, 128, 16, 2, exp_fma=True, **A),
        Config(128, 64, 8, 3, exp_fma=True, **A), Config(128, 64, 8, 3, **A),
        # TMA descriptors (BN must divide the 64-token block)
        Config(256, 64, 16, 3, tma=True, exp_fma=True, **A),
    ]
    # warp-specialized full-tile loop: timed last, at 128 K only, after the SDPA rows, so that a miscompiled
    # (hung) kernel costs nothing else; it can top the table but not be the winner where 1 M ran
    LAST = [Config(256, 64, 16, 3, warp_specialize=True, exp_fma=True, **A)]
FINALISTS = 3  # fastest correct configs timed again at the other contexts (with the default)
MAX_REL = 2e-2  # ‖Δ‖/‖default‖ above this: wrong (reordered bf16 sums differ by ~2^-9; a lost tile by O(1))
BUDGET_S = 270  # later stages start only while the run is younger than this
MAX_S = 450  # watchdog: a hung kernel ends the process here (rows so far are on disk)
Q_GAIN = 4.0


def sweep_ms(fn: Callable[[], Any]) -> float:
    """Fewer reps than the main bench: a 128 K chunk takes ~0.1 s, so ~5 timed calls after the estimate."""
    return bench(fn, warmup_ms=30, rep_ms=400) if DEV.type == "cuda" else timed_ms(fn)


def short(config: Config) -> str:
    """PrefillConfig(128, 64, 8, 3, tma=True): tile ints positional, options only where not the default (the
    rows' config column, and the CONFIGS entry)."""
    base = ", ".join(str(getattr(config, f)) for f in ("block_m", "block_n", "num_warps", "num_stages"))
    opts = "".join(f", {f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config)[4:]
                   if getattr(config, f.name) != f.default)
    return f"PrefillConfig({base}{opts})"


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    diff = out.float() - ref.float()
    return dict(rel_vs_default=float(diff.norm() / ref.float().norm()), max_abs_vs_default=float(diff.abs().max()))


def reason_skipped(config: Config, ctx: Context) -> str | None:
    """Why `config` is not run on this shape, or None: unsupported by the kernel or this Triton, or a TMA ask
    the launch would silently serve with pointer loads (a duplicate row)."""
    if not prefill.supported(H, KVH, D, config):
        return "unsupported (shape, tile sides, or tl.range without warp_specialize in this Triton)"
    if config.tma and not prefill.tma_applies(config, ctx.k.shape[1], ctx.k, ctx.v):
        return "TMA does not apply here (interpreter, or BN does not divide the block size): duplicate"
    return None


def _binaries() -> dict[int, Any]:
    """id → compiled binary of every launch of the prefill kernel so far (empty under the interpreter, or with a
    Triton whose JIT cache is laid out otherwise: then no duplicate is detected)."""
    try:
        return {id(k): k for cache in prefill._prefill_kernel.device_caches.values() for k in cache[0].values()}
    except Exception:  # private Triton structure: best effort
        return {}


def _new_binary(before: dict[int, Any]) -> str | None:
    """Hash of the cubin(s) compiled since `before`, or None."""
    try:
        new = [k.asm["cubin"] for i, k in _binaries().items() if i not in before]
    except Exception:  # private Triton structure: best effort
        return None
    return hashlib.sha1(b"".join(new)).hexdigest()[:12] if new else None


def time_config(ctx: Context, L: int, config: Config, default_out: torch.Tensor | None, peak: float | None,
                seen: dict[str, str]) -> dict[str, Any]:
    """One row. The first call compiles; where `default_out` is given its output is checked against it, and a
    config whose binary equals one timed already (`seen`: hash → config; an option this Triton ignores, say)
    is not timed again."""
    row: dict[str, Any] = dict(context=L, config=short(config))
    if (why := reason_skipped(config, ctx)) is not None:
        return dict(row, error=why)
    t0 = time.time()
    try:
        before = _binaries()
        out = ctx.ours(L, config)
        if default_out is not None:
            row.update(compare(out, default_out))
            row["ok"] = row["rel_vs_default"] <= MAX_REL
        if (binary := _new_binary(before)) is not None:
            if binary in seen:
                return dict(row, same_binary_as=seen[binary])
            seen[binary] = row["config"]
        ms = sweep_ms(lambda: ctx.ours(L, config))
    except Exception as e:  # a config this Triton cannot compile or launch: recorded, not fatal
        return dict(row, error=f"{type(e).__name__}: {str(e)[:300]}", wall_s=round(time.time() - t0, 1))
    row.update(ms=ms, tflops=tflops(CHUNK, L, ms), wall_s=round(time.time() - t0, 1))
    if peak:
        row["of_peak"] = row["tflops"] / peak
    return row


def sdpa_rows(ctx: Context, L: int, ours: torch.Tensor, peak: float | None) -> list[dict[str, Any]]:
    """torch SDPA per backend on the gathered, head-repeated KV (see the module docstring)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    n, G = CHUNK, H // KVH
    idx = ctx.table[0, : -(-L // ctx.k.shape[1])]
    k, v = (c[idx].reshape(-1, KVH, D)[:L].transpose(0, 1).repeat_interleave(G, 0)[None] for c in (ctx.k, ctx.v))
    q = ctx.q.transpose(0, 1)[None]  # [1, H, n, D]; query head h reads kv head h // G, as repeat_interleave lays out
    s = ctx.scale

    def lower_right() -> torch.Tensor:
        return sdpa(q, k, v, attn_mask=causal_lower_right(n, L), scale=s)

    def split() -> torch.Tensor:
        sdpa(q, k[:, :, : L - n], v[:, :, : L - n], scale=s)
        return sdpa(q, k[:, :, L - n:], v[:, :, L - n:], is_causal=True, scale=s)

    rows = []
    cases = [("flash", SDPBackend.FLASH_ATTENTION, True), ("efficient", SDPBackend.EFFICIENT_ATTENTION, True),
             ("cudnn", SDPBackend.CUDNN_ATTENTION, False), ("flash", SDPBackend.FLASH_ATTENTION, False),
             ("efficient", SDPBackend.EFFICIENT_ATTENTION, False)]
    for name, backend, whole in cases:
        row: dict[str, Any] = dict(context=L, backend=name, mask="lower-right bias" if whole else
                                   "split: prefix no mask + square causal (no softmax merge)")
        fn = lower_right if whole else split
        try:
            with sdpa_kernel([backend]):
                out = fn()
                if whole:  # same keys and mask as ours: a check of both
                    row.update(rel_vs_ours=float((out[0].transpose(0, 1).float() - ours.float()).norm()
                                                 / ours.float().norm()))
                ms = sweep_ms(fn)
        except Exception as e:  # backend not built, not for this GPU / dtype / mask: recorded
            rows.append(dict(row, error=f"{type(e).__name__}: {str(e)[:200]}"))
            continue
        rows.append(dict(row, ms=ms, tflops=tflops(n, L, ms), **({"of_peak": tflops(n, L, ms) / peak} if peak else {})))
    return rows


def pick(rows: list[dict[str, Any]], default: str) -> tuple[str, dict[str, float]]:
    """The correct config with the lowest mean of ms / default ms over the contexts it was timed at all."""
    by_ctx: dict[int, dict[str, float]] = {}
    for r in rows:
        if "ms" in r and r.get("ok", True):
            by_ctx.setdefault(r["context"], {})[r["config"]] = r["ms"]
    contexts = [c for c in by_ctx if default in by_ctx[c]]
    common = set.intersection(*(set(by_ctx[c]) for c in contexts)) if contexts else set()
    score = {cfg: sum(by_ctx[c][cfg] / by_ctx[c][default] for c in contexts) / len(contexts) for cfg in common}
    return min(score, key=score.get), score


def main() -> None:
    faulthandler.dump_traceback_later(MAX_S, exit=True)
    start = time.time()
    default = prefill.config_for(D, DTYPE)
    configs = [default] + [c for c in CANDIDATES if c != default]
    meta: dict[str, Any] = dict(environment(), heads=H, kv_heads=KVH, head_dim=D, chunk=CHUNK, dtype=str(DTYPE),
                                default_config=short(default), q_gain=Q_GAIN, max_rel=MAX_REL)
    if DEV.type == "cuda":
        from common import roofline

        meta.update(roofline())
    peak = meta.get("matmul_bf16_tflops")
    sections: dict[str, list[dict[str, Any]]] = {"configs": [], "sdpa": []}
    name = "attention-prefill-sweep" + ("-smoke" if SMOKE else "")

    def save() -> None:
        meta["run_s"] = round(time.time() - start, 1)
        write_results(name, sections, meta)

    gen = torch.Generator(device=DEV).manual_seed(0)
    seen: dict[str, str] = {}
    L = CONTEXTS[0]
    ctx = Context(L, gen)
    ctx.q.mul_(Q_GAIN)
    default_out = ctx.ours(L, default)
    ref = paged_attention_ref(ctx.q, ctx.k, ctx.v, ctx.table, [0], [0, CHUNK], [L], ctx.scale)
    meta["default_rel_err_vs_gather_sdpa"] = compare(default_out, ref)["rel_vs_default"]
    del ref
    for config in configs:
        run_row(sections, time_config(ctx, L, config, default_out, peak, seen), save)
    timed = sorted((r for r in sections["configs"] if "ms" in r and r.get("ok")), key=lambda r: r["ms"])
    names = [r["config"] for r in timed[:FINALISTS]]
    for L2 in CONTEXTS[1:]:  # the finalists at the other contexts: compiled already, so seconds each
        if time.time() - start > BUDGET_S:
            meta.setdefault("skipped", []).append(f"context {L2}: past the time budget")
            continue
        ctx2 = Context(L2, gen)
        for config in [default] + [c for c in configs if short(c) in names and c != default]:
            run_row(sections, time_config(ctx2, L2, config, None, peak, {}), save)
        del ctx2
    if time.time() - start <= BUDGET_S:
        sections["sdpa"] += sdpa_rows(ctx, L, default_out, peak)
        save()
    else:
        meta.setdefault("skipped", []).append("SDPA rows: past the time budget")
    for config in LAST:
        run_row(sections, time_config(ctx, L, config, default_out, peak, seen), save)
    _print_table(sections)
    if not any("ms" in r for r in sections["configs"] if r["config"] == short(default)):
        print("the default config did not run: no winner")
        return
    winner, score = pick(sections["configs"], short(default))
    meta.update(winner=winner, winner_mean_ms_over_default=score[winner])
    save()
    print(f"winner (mean time / default's = {score[winner]:.3f}); the CONFIGS line:\n    ({D}, {DTYPE}): {winner},")


def run_row(sections: dict[str, list[dict[str, Any]]], row: dict[str, Any], save: Callable[[], None]) -> None:
    sections["configs"].append(row)
    print({k: v for k, v in row.items() if k != "context"}, flush=True)
    save()


def _print_table(sections: dict[str, list[dict[str, Any]]]) -> None:
    print(f"{'context':>8} {'ms':>9} {'TFLOP/s':>8} {'of peak':>7} {'rel Δ':>8}  config / backend")
    for r in sections["configs"] + sections["sdpa"]:
        label = r.get("config") or f"SDPA {r['backend']} ({r['mask']})"
        if "ms" not in r:
            why = r.get("error") or f"same binary as {r.get('same_binary_as')}"
            print(f"{r['context']:>8} {'—':>9} {'':>8} {'':>7} {'':>8}  {label}: {why}")
            continue
        rel_d = r.get("rel_vs_default", r.get("rel_vs_ours", float("nan")))
        print(f"{r['context']:>8} {r['ms']:9.3f} {r['tflops']:8.1f} {r.get('of_peak', float('nan')):7.3f} "
              f"{rel_d:8.1e}  {label}{'' if r.get('ok', True) else '  WRONG'}")
