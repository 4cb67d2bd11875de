#!/usr/bin/env bash
# GPU-side checks in one device call (the device tool runs this from the repo root):
#   1. the tests that exercise CUDA paths (Triton kernels on by default there; CLI defaults to cuda + bf16),
#   2. the int8 grouped-MoE kernel (correctness + timing) and 3. the serving benchmark at real dims.
# Packages missing from the device image travel as wheels in .whl2 (see the device README).
set -u
if ls .whl2/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl2/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} OMP_NUM_THREADS=1 MINIMAX01_CACHE_DIR=/tmp/mm01cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_cli.py tests/test_longctx.py \
  tests/test_generation.py 2>&1 | tail -25
python3 -m minimax01 generate --prompt "The lightning attention" --max-new-tokens 16 --temperature 0
python3 bench/quant.py --only moe 2>&1 | tail -15
python3 bench/serve.py --real-dims-layers 2 --device cuda --concurrency 1 4 16 --name serve-cuda-2layers 2>&1 | tail -15
