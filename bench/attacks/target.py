"""A server under attack: one ``python -m server`` process started from a code tree.

The code tree decides which server runs (the process starts with the tree as
its working directory, which shadows any installed copy). Each target gets its
own port, data directory and temporary directory (``TMPDIR``, so what the
server spools to disk can be measured), and its own log file. Nothing here
knows the server's internals: it starts the command line every build shares,
waits for ``/healthz``, and reads the process from ``/proc``.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from client import ssl_context


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerSpec:
    """How an attack wants its server started."""

    token: str | None = None
    args: tuple[str, ...] = ()
    log_level: str = "warning"
    env: dict[str, str] = field(default_factory=dict)
    """Added to the server's environment."""


@dataclass
class Target:
    tree: Path
    scratch: Path
    """This target's own folder: data, temp, log."""
    certs_dir: Path
    spec: ServerSpec = field(default_factory=ServerSpec)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.scratch / "data"

    @property
    def tmp_dir(self) -> Path:
        return self.scratch / "tmp"

    @property
    def log_path(self) -> Path:
        return self.scratch / "server.log"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not started"
        return self.process.pid

    @property
    def token(self) -> str | None:
        return self.spec.token

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/v1/stream"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl_context(self.certs_dir / "ca.pem")

    def http(self, timeout: float = 60) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, verify=self.ssl_context(), timeout=timeout)

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
                   "--certs-dir", str(self.certs_dir), "--engine", "preview", "--log-level", self.spec.log_level, *self.spec.args]
        if self.spec.token:
            command += ["--token", self.spec.token]
        return command

    def start(self, timeout: float = 180, poll: float = 0.2) -> Target:
        """Start the process and wait until ``/healthz`` answers 200, asking every ``poll`` s (blocking: run it on a thread)."""
        for folder in (self.data_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.tmp_dir), **self.spec.env}
        env.pop("PYTHONPATH", None)  # the tree's own code, nothing else's
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.tree, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server from {self.tree} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if self._healthy():
                return self
            time.sleep(poll)
        self.kill()
        raise RuntimeError(f"server from {self.tree} did not become ready in {timeout:.0f} s:\n{self.log()[-4000:]}")

    def _healthy(self) -> bool:
        if not (self.certs_dir / "ca.pem").exists():
            return False
        try:
            with httpx.Client(base_url=self.base_url, verify=self.ssl_context(), timeout=5) as http:
                return http.get("/healthz").status_code == 200
        except (httpx.HTTPError, ssl.SSLError, OSError):
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15) -> None:
        """SIGINT, as Ctrl+C would; SIGKILL if it does not go in time."""
        if not self.running():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
