"""A MineStream server with the Qwen engine, started for a benchmark and stopped after it.

``served(args)`` starts ``python -m server --engine qwen`` on a free loopback
port with the two model dirs (its own data, certificate and token in a temp
dir), waits for ``/healthz``, and yields ``(url, ca, token)``; with ``--url`` it
yields that server's address instead and starts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from client import ssl_context

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def _ready(base: str, ca: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError, OSError):  # OSError: no certificate written yet
            async with httpx.AsyncClient(verify=ssl_context(ca), timeout=5) as http:
                if (await http.get(f"{base}/healthz")).status_code == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError("the server did not become ready")


@contextlib.asynccontextmanager
async def served(args: argparse.Namespace, timeout: float = 300) -> AsyncIterator[tuple[str, str | None, str | None]]:
    if args.url:
        yield args.url, args.ca, args.token
        return
    root = Path(tempfile.mkdtemp(prefix="qwen-serve-"))
    port, token = _free_port(), secrets.token_urlsafe(16)
    command = [sys.executable, "-m", "server", "--engine", "qwen", "--design-model", args.design_model, "--base-model", args.base_model,
               "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(root / "data"), "--certs-dir", str(root / "certs"),
               "--token", token, "--log-level", "warning"]  # fmt: skip
    process = _start(command, root / "server.log")
    try:
        await _ready(f"https://127.0.0.1:{port}", root / "certs" / "ca.pem", process, timeout)
        yield f"wss://127.0.0.1:{port}/v1/stream", str(root / "certs" / "ca.pem"), token
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
