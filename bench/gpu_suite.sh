#!/usr/bin/env bash
# GPU-side checks in one device call (the device tool runs this from the repo root):
#   1. the tests that exercise CUDA paths (Triton kernels, paged decode attention and CUDA-graph decode are on
#      by default there; the CLI defaults to cuda + bf16),
#   2. greedy CLI generation with and without CUDA graphs (must print the same text),
#   3. the engine decode-step and serving benchmarks at real dims (pass "bench" as $1).
# Packages missing from the device image travel as wheels in .whl2 (see the device README).
set -u
if ls .whl2/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl2/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} OMP_NUM_THREADS=1 MINIMAX01_CACHE_DIR=/tmp/mm01cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# A failed CUDA-graph capture (eager fallback + RuntimeWarning) fails the run.
python3 -m pytest -q -p no:cacheprovider -W "error:CUDA-graph capture failed:RuntimeWarning" tests/test_kernels.py tests/test_paged_attention.py tests/test_moe_decode.py \
  tests/test_fused_ops.py tests/test_quant_kernels.py tests/test_quant.py tests/test_engine.py tests/test_generation.py \
  tests/test_cli.py tests/test_longctx.py 2>&1 | tail -25
for g in 1 0; do
  MINIMAX01_CUDA_GRAPHS=$g python3 -m minimax01 generate --prompt "The lightning attention" --max-new-tokens 64 \
    --temperature 0 > /tmp/gen$g.txt
done
cmp /tmp/gen1.txt /tmp/gen0.txt && echo "greedy text identical with and without CUDA graphs"
if [ "${1:-}" = bench ]; then
  python3 bench/decode_step.py 2>&1 | tail -5
  python3 bench/serve.py --real-dims-layers 2 --device cuda --concurrency 1 4 16 --name serve-cuda-2layers 2>&1 | tail -5
fi
