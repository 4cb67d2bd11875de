"""The persistent TMA expert GEMMs (kernels/moe_tma_triton.py) compile for Hopper (sm_90) on a machine without a
GPU: Triton lowers to PTX and its bundled ptxas assembles, no driver needed. The interpreter tests
(test_moe_tma.py) run the kernels' arithmetic but not the compiler; this catches what only the compiler rejects
before GPU time is spent on it.

Runs through tests/hopper_compile.py. Skipped on CUDA machines, where the real tests compile the kernels.
"""

from __future__ import annotations

import pytest
import torch
from hopper_compile import compile_for_hopper

# The model's shape (32 experts, 6144 -> 9216, bf16) with its config (config_for), through descriptors and
# through pointer loads.
SCRIPT = r'''
from minimax01.kernels import moe_tma_triton as m

E, HIDDEN, INTER = 32, 6144, 9216
cfg = m.config_for(HIDDEN, INTER)
BM, BK = cfg["BM"], cfg["BK"]
INT_PTRS = {"blk_ptr": "*i32", "offs_ptr": "*i32", "order_ptr": "*i64"}
KERNELS = [  # kernel, its column tile, descriptor blocks
    (m._up_kernel, cfg["BN_UP"], dict(xs_desc=(BM, BK), w_desc=(cfg["BN_UP"], BK), act_desc=(BM, cfg["BN_UP"]))),
    (m._down_kernel, cfg["BN_DOWN"], dict(act_desc=(BM, BK), w_desc=(cfg["BN_DOWN"], BK))),
]
for fn, bn, descs in KERNELS:
    for tma in (True, False):
        types = dict(INT_PTRS, N="i32", K="i32")
        types.update({n: "tensordesc<bf16[%d, %d]>" % block if tma else "*bf16" for n, block in descs.items()})
        consts = dict(E=E, EP=triton.next_power_of_2(E), BM=BM, BN=bn, BK=BK, GROUP_M=cfg["GROUP_M"],
                      NUM_PROGS=132, TMA=tma, INTERPRET=False)
        compile_sm90(fn, types, consts, cfg["num_warps"], cfg["num_stages"])
        print("compiled", fn.fn.__name__, "tma" if tma else "pointers", flush=True)
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA: the kernel tests compile it for this GPU")
def test_compiles_for_hopper() -> None:
    assert compile_for_hopper(SCRIPT).count("compiled") == 4
