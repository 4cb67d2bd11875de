"""Soak test of `minimax01 serve`: many streaming clients for a bounded time, some of them leaving on purpose.

Starts the real server on a free 127.0.0.1 port (nothing else is contacted) and, until `--duration` seconds
have passed, keeps `--clients` streaming /v1/completions clients busy; each request is, with probability
`--disconnect-fraction`, dropped after a few tokens. Midway, `--killed-clients` separate processes start a long
stream and are killed with SIGKILL after its first token. Seeded probe requests run alone before the load and
again under it: their outputs must be identical. At the end, every slot and KV block must be free again.

    python bench/soak.py                       # 5 minutes, 64 clients -> bench/results/soak-cpu-<date>.*
    python bench/soak.py --duration 60 --clients 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_results  # noqa: E402
from serve import _config, start_server, wait_ready  # noqa: E402

MODEL = "bench"  # the served model name (serve.start_server)
# A killed client: streams a long completion, says when the first event arrived, then waits to be killed.
KILLED_CLIENT = """
import sys, httpx
body = {"model": "bench", "prompt": [9] * 8, "max_tokens": %d, "stream": True, "ignore_eos": True}
with httpx.stream("POST", sys.argv[1] + "/v1/completions", json=body, timeout=600) as resp:
    for line in resp.iter_lines():
        print("started", flush=True)
        sys.stdin.read()
"""


async def stream_one(http: httpx.AsyncClient, body: dict[str, Any], drop_after: int | None) -> str:
    """'completed', 'disconnected' (left after `drop_after` tokens) or 'error: ...'."""
    tokens = 0
    async with http.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            return f"error: HTTP {resp.status_code}"
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])  # an invalid event (bare NaN, cut JSON) raises: counted as an error
            if "error" in event:
                return f"error: {event['error']['message']}"
            tokens += sum(len(c["logprobs"]["tokens"]) for c in event["choices"] if c.get("logprobs"))
            if drop_after is not None and tokens >= drop_after:
                return "disconnected"  # leaving the block closes the connection mid-stream
    return "completed" if tokens == body["max_tokens"] else f"error: {tokens} of {body['max_tokens']} tokens"


async def client(http: httpx.AsyncClient, args: argparse.Namespace, vocab: int, seed: int, deadline: float,
                 outcomes: Counter[str]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        body = {"model": MODEL, "prompt": [rng.randrange(8, vocab) for _ in range(args.prompt_len)],
                "max_tokens": args.max_tokens, "stream": True, "logprobs": 0, "ignore_eos": True,
                "temperature": 1.0, "seed": rng.randrange(2**31)}
        drop = rng.randrange(1, args.max_tokens) if rng.random() < args.disconnect_fraction else None
        try:
            outcomes[await stream_one(http, body, drop)] += 1
        except (httpx.HTTPError, ValueError) as e:
            outcomes[f"error: {type(e).__name__}"] += 1


def probes(url: str, vocab: int, count: int, max_tokens: int) -> list[str]:
    """Texts of `count` seeded sampling requests (temperature 1), one after the other."""
    rng = random.Random(12345)
    texts = []
    for i in range(count):
        body = {"model": MODEL, "prompt": [rng.randrange(8, vocab) for _ in range(16)], "max_tokens": max_tokens,
                "ignore_eos": True, "temperature": 1.0, "seed": 1000 + i}
        texts.append(httpx.post(f"{url}/v1/completions", json=body, timeout=600).json()["choices"][0]["text"])
    return texts


def kill_clients(url: str, count: int, max_tokens: int) -> None:
    """Starts `count` client processes, waits for each one's first token, then SIGKILLs them all."""
    procs = [subprocess.Popen([sys.executable, "-c", KILLED_CLIENT % max_tokens, url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(count)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def gauges(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("minimax01_") and "{" not in name and value:
            out[name.removeprefix("minimax01_")] = float(value)
    return out


def wait_idle(url: str, polls: int = 600) -> tuple[dict[str, float], bool]:
    """(/metrics, True) once no slot or KV block is in use; (last /metrics, False) after `polls` tries."""
    m: dict[str, float] = {}
    for _ in range(polls):
        m = gauges(url)
        if m["free_slots"] == m["num_slots"] and m["free_kv_blocks"] == m["num_kv_blocks"]:
            return m, True
        time.sleep(0.1)
    return m, False


async def load(url: str, args: argparse.Namespace, vocab: int, outcomes: Counter[str]) -> list[str]:
    """The soak itself; returns the probe texts measured halfway through, under load."""
    deadline = time.monotonic() + args.duration
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        tasks = [asyncio.create_task(client(http, args, vocab, args.seed + i, deadline, outcomes))
                 for i in range(args.clients)]
        await asyncio.sleep(args.duration / 2)
        under_load = await asyncio.to_thread(probes, url, vocab, args.probes, args.max_tokens)
        await asyncio.to_thread(kill_clients, url, args.killed_clients, 10 * args.max_tokens)
        await asyncio.gather(*tasks)
    return under_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=300, help="seconds of load (default %(default)s)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--disconnect-fraction", type=float, default=0.1)
    ap.add_argument("--killed-clients", type=int, default=4)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    server_args = argparse.Namespace(device="cpu", max_num_seqs=args.max_num_seqs, max_num_batched_tokens=512,
                                     prompt_len=args.prompt_len, max_tokens=10 * args.max_tokens, tp=1,
                                     real_dims_layers=0, model=None, dtype=None, threads=1)

    from minimax01.parallel.launch import free_port

    port = free_port()
    url, log = f"http://127.0.0.1:{port}", Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-soak-{port}.log"
    proc = start_server(server_args, port, log)
    outcomes: Counter[str] = Counter()
    try:
        wait_ready(url, proc, log)
        vocab = _config(None).vocab_size
        alone = probes(url, vocab, args.probes, args.max_tokens)
        started = time.monotonic()
        under_load = asyncio.run(load(url, args, vocab, outcomes))
        wall = time.monotonic() - started
        final, idle = wait_idle(url)
    finally:
        proc.terminate()
        proc.wait(60)
    errors = sum(n for k, n in outcomes.items() if k.startswith("error"))
    row = {"wall_s": round(wall, 1), "clients": args.clients, "completed": outcomes["completed"],
           "disconnected": outcomes["disconnected"], "killed_clients": args.killed_clients, "errors": errors,
           "seeded_outputs_identical": under_load == alone, "all_slots_and_blocks_free": idle,
           "preemptions": final.get("preemptions", "n/a")}
    print(json.dumps(row), json.dumps({k: n for k, n in outcomes.items() if k.startswith("error")}))
    meta = {"model": "built-in tiny (random weights)", "duration_s": args.duration, "cpu_cores": os.cpu_count(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "max_num_seqs": args.max_num_seqs,
            "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
            "disconnect_fraction": args.disconnect_fraction, "outcomes": dict(outcomes), **environment()}
    for path in write_results("soak-cpu", {"soak": [row]}, meta):
        print("wrote", path)
    if errors or not idle or under_load != alone:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
