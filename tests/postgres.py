"""A real PostgreSQL server for the tests, from the distribution's binaries.

``initdb`` in a temporary directory, ``postgres`` on a free loopback port with
its socket in that directory, trust authentication; stopped (and its directory
removed) at the end of the run. As root, which PostgreSQL refuses to be, it
runs as the ``postgres`` user the package creates. ``tests/run.sh`` installs the
``postgresql`` package where it is missing.

The ``postgres`` fixture is one server for the run; ``postgres.database()``
makes a fresh, empty database on it for a test. ``postgres_factory`` makes
servers of a test's own (to stop and start under a library), removed after it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

USER = "minestream"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_binaries() -> Path:
    """The directory of ``initdb`` and ``postgres``: on PATH, or Debian's versioned one."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: tests/run.sh installs the 'postgresql' package")
    return Path(versions[-1]).parent


@dataclass
class PostgresServer:
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    databases: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self) -> dict[str, Any]:
        """Run PostgreSQL's programs as the unprivileged user when the tests run as root."""
        return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    def init(self) -> PostgresServer:
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        command = [str(postgres_binaries() / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"]
        subprocess.run(command, check=True, capture_output=True, **self._as_owner())
        return self

    def start(self, timeout: float = 30) -> PostgresServer:
        command = [
            str(postgres_binaries() / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - kept open for the child's life
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **self._as_owner())
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self.log()}")
            if self._accepts():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres did not start:\n{self.log()}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        return self.psql("SELECT 1", check=False).returncode == 0

    def psql(self, sql: str, database: str = "postgres", *, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(postgres_binaries() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database, "-tAc", sql]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=30)

    def database(self) -> str:
        """A fresh database's URL."""
        self.databases += 1
        name = f"library{self.databases}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """A fast shutdown: clients are disconnected, as when the server goes away."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


def new_server() -> PostgresServer:
    """An initialised server, not started, in a directory of its own (pytest's are closed to other users)."""
    return PostgresServer(Path(tempfile.mkdtemp(prefix="minestream-pg-"))).init()


def remove(server: PostgresServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = new_server()
    try:
        yield server.start()
    finally:
        remove(server)


@pytest.fixture
def postgres_factory() -> Iterator[Callable[[], PostgresServer]]:
    made: list[PostgresServer] = []

    def make() -> PostgresServer:
        made.append(new_server())
        return made[-1]

    try:
        yield make
    finally:
        for server in made:
            remove(server)
