"""Fixtures that start the real server: a subprocess, over TLS, on loopback.

``server`` is one preview-engine server shared by the whole run (tests that
only talk to it); ``server_factory`` starts private ones (restarts, tokens,
small limits, other engines) and stops them at the end of the test.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import Client, ssl_context

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.postgres"]  # the ``postgres`` fixture: a real PostgreSQL server


if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: torch's and OpenMP's default of a thread per core in every worker (and in
    # the servers it starts) oversubscribes the cores, and idle OpenMP threads spin. Measured on two
    # cores, test_qwen_batch.py alone takes a third less CPU with one thread, and no longer.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    # Servers, replicas and in-process engines keep the preview voice's optimised graph here
    # (server/engines/onnx_session.py), not in the user's cache; the workers inherit it.
    os.environ.setdefault("MINESTREAM_MODEL_CACHE", str(Path(tempfile.gettempdir()) / f"minestream-test-model-cache-{os.getuid()}"))


HEAVIEST_FIRST = (
    "test_hardening.py", "test_qwen_codec.py", "test_cluster.py", "test_page.py", "test_qwen_engine.py", "test_rtc.py",
    "test_bench.py", "test_page_rtc.py", "test_cli.py", "test_page_opus.py", "test_qwen_server.py", "test_remote_engine.py",
    "test_openai_sdk.py", "test_errors.py", "test_library.py", "test_qwen_batch.py", "test_qwen_bench.py", "test_client.py",
)  # fmt: skip
"""Test files by the time they take (``--durations``, two workers), longest first. Two workers take
whole files (``--dist loadfile --no-loadscope-reorder``) in this order, so the long ones do not
meet at the end with one worker idle. A file left out runs after these, in its usual order."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file stays


def pytest_collection_finish(session: pytest.Session) -> None:
    # Collection imported torch, transformers, qwen-tts, livekit... : some 560,000 objects that live as
    # long as the worker. Without this every full collection walks them again (0.4 s each; the Qwen
    # engine's close runs one, so the Qwen files spent a fifth of their time there). Only objects
    # made at import are frozen; everything a test makes is collected as before.
    gc.freeze()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    data_dir: Path
    certs_dir: Path
    args: tuple[str, ...] = ()
    token: str | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    plain: bool = False
    """Started with --no-tls: plain HTTP and ws://."""

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain else 'https'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'ws' if self.plain else 'wss'}://127.0.0.1:{self.port}/v1/stream"

    @property
    def ca_file(self) -> Path:
        return self.certs_dir / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl_context(self.ca_file)

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, verify=True if self.plain else self.ssl_context(), timeout=60, **kwargs)

    async def client(self, **kwargs: Any) -> Client:
        kwargs.setdefault("token", self.token)
        return await Client.connect(self.ws_url, ssl=self.ssl_context(), **kwargs)

    def start(self, timeout: float = 120) -> LiveServer:
        command = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--data-dir", str(self.data_dir), "--certs-dir", str(self.certs_dir), "--log-level", "warning", *self.args]
        if self.token:
            command += ["--token", self.token]
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.plain or self.ca_file.exists():
                    with self.http() as http:
                        if http.get("/healthz").status_code == 200:
                            return self
            except (httpx.HTTPError, ssl.SSLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> LiveServer:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[LiveServer]:
    """One preview-engine server for the run; tests must leave it as they found it."""
    live = LiveServer(tmp_path_factory.mktemp("shared") / "data", certs_dir, ("--engine", "preview")).start()
    yield live
    live.stop()


GUARDED_TOKEN = "guarded-s3cret"


@pytest.fixture(scope="session")
def guarded_server(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[LiveServer]:
    """A second server for the run, one that needs a token (``GUARDED_TOKEN``) and offers loopback ICE candidates
    only; tests must leave it as they found it (its library empty)."""
    args = ("--engine", "preview", "--ice-host", "127.0.0.1")
    live = LiveServer(tmp_path_factory.mktemp("guarded") / "data", certs_dir, args, token=GUARDED_TOKEN).start()
    yield live
    live.stop()


@pytest.fixture
def server_factory(tmp_path: Path, certs_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start private servers: ``server_factory("--max-text-chars", "50", token="t")``."""
    started: list[LiveServer] = []

    def start(
        *args: str, token: str | None = None, engine: str = "preview", data_dir: Path | None = None, certs: Path | None = None,
        plain: bool = False,
    ) -> LiveServer:
        live = LiveServer(data_dir or tmp_path / f"data{len(started)}", certs or certs_dir, ("--engine", engine, *args), token=token, plain=plain)
        started.append(live)
        return live.start()

    yield start
    for live in started:
        live.stop()


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few seconds of real speech (espeak-ng), 16-bit mono WAV."""
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    text = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. It is easy to tell the depth of a well."
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), text], check=True)
    return path
