"""``python -m client``, as a person types it."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

from tests.conftest import ROOT


def run(server: Any, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "client", "--url", server.ws_url, "--ca", str(server.ca_file), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_say_prints_ttfa_and_writes_wav(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    result = run(server, "say", "Hello from the command line.", "--design", "warm narrator", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("TTFA ") and "ms" in result.stdout
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 24000 and wav.getnframes() > 24000


def test_clone_then_list(server: Any, speech_wav: Path) -> None:
    cloned = run(server, "clone", str(speech_wav), "--name", "cli-voice")
    assert cloned.returncode == 0, cloned.stderr
    listed = run(server, "voices")
    assert "cli-voice" in listed.stdout


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "client", "--url", "wss://127.0.0.1:9/v1/stream", "say", "hi"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "cannot reach" in result.stderr
