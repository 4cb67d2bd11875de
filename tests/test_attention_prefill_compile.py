"""The paged prefill attention kernel compiles for Hopper (sm_90) on a machine without a GPU: Triton lowers to
PTX and its bundled ptxas assembles, no driver needed. The interpreter tests (test_attention_prefill.py) run the
kernel's arithmetic but not the compiler, which rejects what the interpreter accepts (returns of different
types, for one); this catches such a config before GPU time is spent on it.

Runs through tests/hopper_compile.py. Skipped on CUDA machines, where the real tests compile the kernel.
"""

from __future__ import annotations

import pytest
import torch
from hopper_compile import compile_for_hopper

# The model's shape (G = 8, D = 128, 64-token blocks, bf16): every kernel option, both block-lookup paths.
SCRIPT = r'''
from minimax01.kernels import attention_prefill_triton as prefill

C = prefill.PrefillConfig
CONFIGS = [C(128, 64, 8, 4, block_ahead=True, exp_fma=True, v_early=True), C(128, 128, 8, 3, block_ahead=True),
           C(128, 64, 8, 3, tma=True, block_ahead=True, warp_specialize=True)]
INT_PTRS = {"bt_ptr": "*i32", "slot_ptr": "*i64", "cu_ptr": "*i32", "len_ptr": "*i32", "tile_seq_ptr": "*i32",
            "tile_q0_ptr": "*i32"}
for c in CONFIGS:
    desc = "tensordesc<bf16[%d, 128]>" % c.block_n if c.tma else "*bf16"
    consts = dict(G=8, D=128, BM=c.block_m, BN=c.block_n, BS=64, TMA=c.tma, WS=c.warp_specialize,
                  V_EARLY=c.v_early, EXP_FMA=c.exp_fma, AHEAD=c.block_ahead, INTERPRET=False)
    compile_sm90(prefill._prefill_kernel, dict(INT_PTRS, k_desc=desc, v_desc=desc, scale_log2="fp32"), consts,
                 c.num_warps, c.num_stages)
    print("compiled", c, flush=True)
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA: the kernel tests compile it for this GPU")
def test_compiles_for_hopper() -> None:
    assert compile_for_hopper(SCRIPT).count("compiled") == 3
