"""Serving benchmark: throughput and latency (TTFT, ITL percentiles) of `minimax01 serve` vs concurrency.

Starts the real server (`python -m minimax01 serve ...`) on a free 127.0.0.1 port, then for each concurrency level
keeps that many streaming /v1/completions clients busy until `--requests` requests have finished. Prompts are
random token ids (fixed length, seeded), outputs run to exactly `--max-tokens` (`ignore_eos`), and every token
is streamed as its own SSE event (`logprobs: 0`), so that each token's arrival time is measured at the client:
- TTFT: request sent -> first token event;
- ITL: gaps between successive token events of one request;
- throughput: generated tokens (and requests) / wall time of the level.

    python bench/serve.py                      # built-in tiny model on CPU -> bench/results/serve-cpu-<date>.*
    python bench/serve.py --model DIR --device cuda --concurrency 1 8 32
    python bench/serve.py --real-dims-layers 8 --device cuda --tp 2   # Text-01 dims, 8 layers, random weights
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, percentile, write_results  # noqa: E402

from minimax01.config import MiniMaxConfig  # noqa: E402


async def one_request(http: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "logprobs": 0,
            "ignore_eos": True, "temperature": 1.0, "seed": random.randrange(2**31)}
    t0 = time.perf_counter()
    arrivals: list[float] = []
    async with http.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread()).decode()}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            now = time.perf_counter()
            for choice in event["choices"]:
                lp = choice.get("logprobs")
                arrivals += [now] * len(lp["tokens"] if lp else [])
    if len(arrivals) != max_tokens:
        raise RuntimeError(f"expected {max_tokens} tokens, got {len(arrivals)}")
    return {"ttft": arrivals[0] - t0, "itl": [b - a for a, b in itertools.pairwise(arrivals)],
            "latency": arrivals[-1] - t0, "tokens": len(arrivals)}


async def run_level(url: str, model: str, concurrency: int, num_requests: int, prompt_len: int, max_tokens: int,
                    vocab: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    # Ids >= 8 avoid the special tokens of the tiny tokenizer (0..4) whatever the checkpoint.
    prompts = [[rng.randrange(8, vocab) for _ in range(prompt_len)] for _ in range(num_requests)]
    results: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        queue = list(reversed(prompts))

        async def worker() -> None:
            while queue:
                results.append(await one_request(http, model, queue.pop(), max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results]
    itl = [x for r in results for x in r["itl"]]
    tokens = sum(r["tokens"] for r in results)
    ms = 1000.0
    return {
        "concurrency": concurrency, "requests": num_requests, "wall_s": round(wall, 2),
        "output_tok_per_s": tokens / wall, "total_tok_per_s": (tokens + num_requests * prompt_len) / wall,
        "req_per_s": num_requests / wall,
        "ttft_p50_ms": percentile(ttft, 50) * ms, "ttft_p90_ms": percentile(ttft, 90) * ms,
        "ttft_p99_ms": percentile(ttft, 99) * ms,
        "itl_p50_ms": percentile(itl, 50) * ms, "itl_p90_ms": percentile(itl, 90) * ms,
        "itl_p99_ms": percentile(itl, 99) * ms, "itl_mean_ms": statistics.fmean(itl) * ms if itl else float("nan"),
        "latency_p50_s": percentile([r["latency"] for r in results], 50),
    }


def real_dims_dir(args: argparse.Namespace) -> Path:
    """A checkpoint directory for --real-dims-layers: config.json with the real dimensions and N layers (the
    server draws random weights, `--load-format dummy`) and the built-in tiny tokenizer (ids it does not know
    decode to nothing; the benchmark counts tokens, not text)."""
    import shutil
    import tempfile

    from minimax01.tiny import ensure_default_model

    out = Path(tempfile.mkdtemp(prefix="minimax01-serve-bench-"))
    MiniMaxConfig.preset_slice(args.preset, args.real_dims_layers).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ensure_default_model() / f, out / f)
    return out


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "minimax01", "serve", "--port", str(port), "--device", args.device,
           "--max-num-seqs", str(args.max_num_seqs), "--max-num-batched-tokens", str(args.max_num_batched_tokens),
           "--served-model-name", "bench", "--max-model-len", str(args.prompt_len + args.max_tokens + 16),
           "--tp", str(args.tp)]
    if args.real_dims_layers:
        cmd += ["--model", str(real_dims_dir(args)), "--load-format", "dummy", "--dtype", args.dtype or "bf16"]
    else:
        if args.model:
            cmd += ["--model", args.model]
        if args.dtype:
            cmd += ["--dtype", args.dtype]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return httpx.get(f"{url}/v1/models").json()["data"][0]
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout} s:\n{log.read_text()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: the built-in tiny model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], help="default: the server's (fp32 on CPU, bf16 on GPU)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=0, help="requests per level (default: 2 x concurrency, >= 8)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of the server (0: torch's default). The tiny model's ops are too small "
                         "to gain from threads, and client and server share the machine (default %(default)s)")
    ap.add_argument("--real-dims-layers", type=int, default=0, metavar="N",
                    help="instead of --model: a random bf16 model with the real Text-01 dimensions and N layers")
    ap.add_argument("--preset", default="text-01", help=argparse.SUPPRESS)  # dims of --real-dims-layers
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of the server (one GPU per rank)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", help="results name (default: serve-<device>)")
    args = ap.parse_args()
    random.seed(args.seed)

    from minimax01.parallel.launch import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-serve-{port}.log"
    proc = start_server(args, port, log)
    try:
        info = wait_ready(url, proc, log)
        load_before = os.getloadavg()[0]
        vocab = (MiniMaxConfig.preset_slice(args.preset, args.real_dims_layers) if args.real_dims_layers
                 else _config(args.model)).vocab_size
        # Warm-up at every level: kernel compilation for new batch shapes and the capture of each decode batch
        # size's CUDA graph happen here, not in the measured requests.
        for c in args.concurrency:
            asyncio.run(run_level(url, "bench", c, c, args.prompt_len, args.max_tokens, vocab, seed=-c))
        rows = []
        for c in args.concurrency:
            n = args.requests or max(2 * c, 8)
            row = asyncio.run(run_level(url, "bench", c, n, args.prompt_len, args.max_tokens, vocab, args.seed + c))
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    model = (f"random {args.preset} dims, {args.real_dims_layers} layers, bf16" if args.real_dims_layers
             else args.model or "built-in tiny (16 layers, hidden 64, vocab 512, random weights)")
    meta = {"model": model,
            # Client and server share this machine's cores; other processes' load skews CPU numbers.
            "load_avg_1m": f"{load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end",
            "device": args.device, "tp": args.tp, "dtype": args.dtype or "server default", "cpu_cores": os.cpu_count(),
            "server_omp_threads": args.threads or "torch default",
            "prompt_len": args.prompt_len, "max_tokens": args.max_tokens, "max_num_seqs": args.max_num_seqs,
            "max_num_batched_tokens": args.max_num_batched_tokens, "max_model_len": info["max_model_len"],
            "client": "httpx streaming /v1/completions, one SSE event per token, ignore_eos",
            "preemptions": _sample(metrics, "minimax01_preemptions"), **environment()}
    for path in write_results(args.name or f"serve-{args.device}", {"concurrency": rows}, meta):
        print("wrote", path)


def _sample(metrics: str, name: str) -> str:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return line.split()[1]
    return "n/a"


def _config(model_dir: str | None) -> Any:
    from minimax01.tiny import ensure_default_model

    return MiniMaxConfig.from_pretrained(model_dir or ensure_default_model())


if __name__ == "__main__":
    main()
