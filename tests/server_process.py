"""Server processes for the end-to-end tests: start one on a free port of 127.0.0.1, wait until /health answers,
stop it afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def wait_until_healthy(proc: subprocess.Popen, url: str, log: Path, limit_s: float) -> None:
    """Until the server process answers /health (fails the test if it exits or is not up after `limit_s`)."""
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server did not start:\n{log.read_text()}")
        time.sleep(0.2)


def server_process(args: list[str], log: Path, start_limit_s: float) -> Iterator[str]:
    """Runs `python args...` with `--port <free port>` added; yields its base URL once /health answers (within
    `start_limit_s`); stops it afterwards."""
    from minimax01.parallel.launch import free_port

    port = free_port()
    with open(log, "w") as out:
        # One intra-op thread: the tiny model's ops are too small to gain from more, and on a busy 2-core machine
        # spinning OpenMP threads slow every step down by an order of magnitude.
        proc = subprocess.Popen([sys.executable, *args, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log, start_limit_s)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def serve_cli(checkpoint: Path, log: Path, *flags: str) -> Iterator[str]:
    """`minimax01 serve` (the command users run, fp32 on the CPU) on a free port; yields its base URL once /health
    answers; stops it afterwards."""
    # The start-up limit only catches a hang; generous so that a busy machine does not fail it.
    yield from server_process(["-m", "minimax01", "serve", "--model", str(checkpoint), "--dtype", "fp32",
                               "--device", "cpu", *flags], log, 120)
