"""What a server process holds, read from ``/proc``: memory, bytes read, temp files, sockets.

Every figure comes from outside the process, so the same probe measures any
build: ``VmRSS``/``VmHWM`` from ``/proc/PID/status``; bytes read from
``/proc/PID/io`` (``rchar`` counts socket reads too, so on an otherwise idle
server it is what a client's body cost the server to read); the size of the
files it has open under a folder (temp files are usually unlinked, so a
directory listing alone would miss them); and whether it still holds the
socket of one client connection.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20


@dataclass(frozen=True)
class Memory:
    rss: int
    """Bytes resident now (VmRSS)."""
    hwm: int
    """Peak resident bytes over the process's life (VmHWM)."""


def memory(pid: int) -> Memory:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return Memory(fields["VmRSS"], fields["VmHWM"])


def bytes_read(pid: int) -> int:
    """``rchar``: every byte the process has read with read-like calls, sockets included."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no rchar")


def open_file_bytes(pid: int, folder: Path) -> int:
    """Total size of the regular files the process has open under ``folder`` (deleted ones included)."""
    prefix = str(folder.resolve())
    total = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for entry in os.scandir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(entry.path)
                if target.startswith(prefix):
                    total += os.stat(entry.path).st_size
    return total


def folder_bytes(folder: Path) -> int:
    """Size of the files under ``folder`` now (those still linked)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def holds_socket(pid: int, server_port: int, client_port: int) -> bool:
    """Whether the process still has open the server side of the TCP connection from ``client_port``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                local, remote, inode = parts[1], parts[2], parts[9]
                if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                    inodes.add(inode)
    inodes.discard("0")  # an orphaned socket: no process holds it any more
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(entry.path) in wanted:
                    return True
    return False
