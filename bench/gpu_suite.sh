#!/usr/bin/env bash
# GPU-side checks in one run on a GPU machine (run from the repo root):
#   1. the tests that exercise CUDA paths (Triton kernels, paged decode attention and CUDA-graph decode are on
#      by default there; the CLI defaults to cuda + bf16),
#   2. greedy CLI generation with and without CUDA graphs (must print the same text),
#   3. with 2 or more GPUs: the NCCL tests (tests/test_parallel_gpu.py: TP / EP logits and tokens against one
#      GPU, graph decode under TP), and `generate --tp 2` against one GPU,
#   4. the benchmarks ("bench" as $1): 1 vs N GPUs decode step / prefill, the long-prefill kernels and the 8-layer
#      long prefill, the prefill GEMMs, prefix caching, serving, the step channel (more than one 10-minute run).
# Packages missing from the GPU machine's Python (the server stack, openai, llguidance, prometheus_client) can be
# put as wheels in .whl2/.
# NVLink multicast stays off in every process (NCCL, torch symmetric memory, NVSHMEM).
set -u
if ls .whl2/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl2/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} OMP_NUM_THREADS=1 MINIMAX01_CACHE_DIR=/tmp/mm01cache PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUTDIR=${OUT:-/tmp}
GPUS=$(python3 -c 'import torch; print(torch.cuda.device_count())')
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "${1:-}" != bench ]; then
  # A failed CUDA-graph capture (eager fallback + RuntimeWarning) fails the run.
  python3 -m pytest -q -p no:cacheprovider -W "error:CUDA-graph capture failed:RuntimeWarning" tests/test_kernels.py \
    tests/test_paged_attention.py tests/test_moe_decode.py tests/test_fused_ops.py tests/test_quant_kernels.py \
    tests/test_quant.py tests/test_engine.py tests/test_generation.py tests/test_cli.py tests/test_longctx.py \
    tests/test_attention_prefill.py tests/test_lightning_segmented.py tests/test_moe_prefill_choice.py \
    tests/test_moe_tma.py tests/test_lightning_variants.py \
    tests/test_prefix_cache.py tests/test_linear_triton.py 2>&1 | tee "$OUTDIR/gpu-tests.log" | tail -15
  for g in 1 0; do
    MINIMAX01_CUDA_GRAPHS=$g python3 -m minimax01 generate --prompt "The lightning attention" --max-new-tokens 64 \
      --temperature 0 > /tmp/gen$g.txt
  done
  cmp /tmp/gen1.txt /tmp/gen0.txt && echo "greedy text identical with and without CUDA graphs"
  if [ "$GPUS" -ge 2 ]; then
    python3 -m pytest -q -s -p no:cacheprovider -W "error:CUDA-graph capture failed:RuntimeWarning" \
      tests/test_parallel_gpu.py 2>&1 | tee "$OUTDIR/multi-gpu-tests.log" | grep -E "diff|equal|passed|failed|Error" | tail -30
    python3 -m minimax01 generate --prompt "The lightning attention" --max-new-tokens 48 --temperature 0 \
      --dtype fp32 --tp 2 > /tmp/gen-tp2.txt 2>/tmp/gen-tp2.err
    python3 -m minimax01 generate --prompt "The lightning attention" --max-new-tokens 48 --temperature 0 \
      --dtype fp32 > /tmp/gen-tp1.txt 2>/dev/null
    cmp /tmp/gen-tp1.txt /tmp/gen-tp2.txt && echo "generate --tp 2 prints what one GPU prints"; tail -1 /tmp/gen-tp2.err
  fi
else
  TP=$([ "$GPUS" -ge 2 ] && echo 2 || echo 1)
  python3 bench/decode_step.py --tp $TP 2>&1 | tee "$OUTDIR/decode-step.log" | grep -vE "^\s*$" | tail -12
  python3 bench/decode_profile.py --tp $TP 2>&1 | tail -3
  python3 bench/attention_prefill.py 2>&1 | tail -12
  python3 bench/attention_prefill.py --sweep 2>&1 | tail -3  # prints the CONFIGS line of the fastest tiles
  python3 bench/linear.py 2>&1 | tail -2
  python3 bench/linear.py --sweep 2>&1 | tail -2  # tile configs of the row-invariant GEMM
  python3 bench/long_prefill.py 2>&1 | tail -4
  python3 bench/prefill_kernels.py 2>&1 | tail -20  # prints the MoE table row and the lightning switch to set
  python3 bench/step_channel.py --world $TP --name step-channel-cuda-host 2>&1 | tail -7
  python3 bench/prefix_cache.py --device cuda --dims real --layers 8 2>&1 | tail -20
  for tp in 1 $TP; do
    python3 bench/serve.py --real-dims-layers 8 --device cuda --tp $tp --concurrency 1 16 64 --prompt-len 256 \
      --max-tokens 128 --max-num-seqs 64 --name serve-cuda-8layers-tp$tp 2>&1 | tail -4
  done
fi
