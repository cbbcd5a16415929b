"""``python -m client`` (the ``minestream`` command), as a person types it, against the real server.

Each failure a user meets has its one-line message and its exit code
(``client.cli.exits.Exit``); none may print a traceback or hang. Commands
run in a scratch directory, so the checkout's ``certs/`` and ``data/`` are
not picked up by the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import stat
import subprocess
import sys
import wave
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

from client.cli import DELEGATED, parser
from client.cli import main as cli_main
from client.cli.exits import Exit
from server.tls import ensure_certificates
from tests.audio_checks import assert_speech
from tests.conftest import ROOT, LiveServer, free_port
from tests.peers import silent_listener

COMMAND_TIMEOUT_S = 120


def minestream(*args: str, cwd: Path, stdin: bytes | None = None, env: dict[str, str] | None = None,
               stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    for name in ("MINESTREAM_URL", "MINESTREAM_TOKEN", "MINESTREAM_TOKEN_FILE", "MINESTREAM_CA"):
        if env is None or name not in env:
            environment.pop(name, None)
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=cwd, input=stdin, stdout=stdout, stderr=subprocess.PIPE,
                          env=environment, timeout=COMMAND_TIMEOUT_S)


def against(server: LiveServer, *args: str, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return minestream("--url", server.ws_url, "--ca", str(server.ca_file), *args, cwd=cwd, **kwargs)


def one_clean_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The error line: exactly one, no traceback."""
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def wav_pcm(data: bytes) -> tuple[int, np.ndarray]:
    """(rate, float PCM) of a WAV, streamed (lengths at their maximum) or not."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[36:40] == b"data"
    rate = int.from_bytes(data[24:28], "little")
    return rate, np.frombuffer(data[44:], "<i2").astype(np.float32) / 32768


# --- say ------------------------------------------------------------------------


def test_say_writes_a_wav_file_and_prints_a_summary(server: LiveServer, tmp_path: Path) -> None:
    text = "Hello from the command line."
    result = against(server, "say", text, "--design", "warm narrator", "-o", "out.wav", cwd=tmp_path)
    assert result.returncode == Exit.OK, result.stderr
    assert re.match(r"TTFA \d+ ms \(server \d+ ms\), \d+\.\d\d s of audio, RTF \d\.\d\d, engine [\w-]+ -> out.wav$", result.stdout.decode().strip())
    with wave.open(str(tmp_path / "out.wav")) as wav:
        assert wav.getframerate() == 24000 and wav.getnchannels() == 1
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768
    assert_speech(pcm, 24000, text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # no .part left behind


def test_say_reads_stdin_and_writes_stdout(server: LiveServer, tmp_path: Path) -> None:
    text = "Piped in, and piped out again."
    result = against(server, "say", "-", "-o", "-", "--sample-rate", "16000", cwd=tmp_path, stdin=text.encode())
    assert result.returncode == Exit.OK, result.stderr
    rate, pcm = wav_pcm(result.stdout)  # stdout is the WAV and nothing else
    assert rate == 16000
    assert_speech(pcm, 16000, text)
    summary = re.search(r"([\d.]+) s of audio", result.stderr.decode())
    assert summary and abs(float(summary.group(1)) - len(pcm) / 16000) < 0.02
    assert list(tmp_path.iterdir()) == []


def test_progress_line_when_asked(server: LiveServer, tmp_path: Path) -> None:
    result = against(server, "say", "A progress line comes with this one. " * 3, "-o", "p.wav", "--progress", cwd=tmp_path)
    assert result.returncode == Exit.OK, result.stderr
    assert re.search(r"\r\d+\.\d s of audio in \d+\.\d s", result.stderr.decode())


def test_stdout_audio_is_refused_on_a_terminal(server: LiveServer, tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    try:
        result = against(server, "say", "hi", "-o", "-", cwd=tmp_path, stdout=follower)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == Exit.USAGE and b"terminal" in result.stderr


def test_play_feeds_the_player_found_on_path(server: LiveServer, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    player = bin_dir / "aplay"  # stands in for ALSA's: records its arguments and what it was fed
    player.write_text(f"#!{sys.executable}\nimport sys, pathlib\n"
                      f"pathlib.Path({str(tmp_path / 'played.json')!r}).write_text(repr(sys.argv[1:]))\n"
                      f"pathlib.Path({str(tmp_path / 'played.pcm')!r}).write_bytes(sys.stdin.buffer.read())\n")
    player.chmod(player.stat().st_mode | stat.S_IEXEC)
    text = "Played through the speakers."
    result = against(server, "say", text, "--play", cwd=tmp_path, env={"PATH": str(bin_dir)})
    assert result.returncode == Exit.OK, result.stderr
    assert result.stdout.decode().strip().endswith("-> the speakers")
    assert "-r" in (tmp_path / "played.json").read_text() and "24000" in (tmp_path / "played.json").read_text()
    pcm = np.frombuffer((tmp_path / "played.pcm").read_bytes(), "<i2").astype(np.float32) / 32768
    assert_speech(pcm, 24000, text)
    assert not (tmp_path / "out.wav").exists()


def test_play_without_a_player_says_so(server: LiveServer, tmp_path: Path) -> None:
    result = against(server, "say", "hi", "--play", cwd=tmp_path, env={"PATH": str(tmp_path)})
    assert result.returncode == Exit.LOCAL and "no audio player found" in one_clean_line(result)


# --- clean failures, each with its exit code ----------------------------------------


def test_an_error_before_ready_fails_at_once(server: LiveServer, tmp_path: Path) -> None:
    result = against(server, "say", "hi", "--sample-rate", "8000", "-o", "x.wav", cwd=tmp_path)
    assert result.returncode == Exit.SERVER_ERROR
    line = one_clean_line(result)
    assert "bad_message" in line and "sample_rate" in line
    assert list(tmp_path.iterdir()) == []


def test_server_down(tmp_path: Path) -> None:
    url = f"wss://127.0.0.1:{free_port()}/v1/stream"
    for command in (("say", "hi"), ("voices",)):
        result = minestream("--url", url, *command, cwd=tmp_path)
        assert result.returncode == Exit.UNREACHABLE
        assert "cannot reach" in one_clean_line(result) and "refused" in result.stderr.decode()


def test_certificate_that_does_not_verify(server: LiveServer, tmp_path: Path) -> None:
    ensure_certificates(tmp_path / "stranger")
    for command in (("say", "hi", "-o", "x.wav"), ("voices",)):
        result = minestream("--url", server.ws_url, "--ca", str(tmp_path / "stranger" / "ca.pem"), *command, cwd=tmp_path)
        assert result.returncode == Exit.CERTIFICATE
        line = one_clean_line(result)
        assert "did not verify" in line and "--ca" in line and "cannot reach" not in line
    insecure = minestream("--url", server.ws_url, "--insecure", "voices", cwd=tmp_path)
    assert insecure.returncode == Exit.OK, insecure.stderr


def test_missing_or_wrong_token(guarded_server: LiveServer, tmp_path: Path) -> None:
    live = guarded_server
    for command in (("say", "hi", "-o", "x.wav"), ("voices",)):
        for token in ((), ("--token", "wrong")):
            result = against(live, *token, *command, cwd=tmp_path)
            assert result.returncode == Exit.UNAUTHORIZED, result.stderr
            assert "unauthorized" in one_clean_line(result) and "--token-file" in result.stderr.decode()
    (tmp_path / "token").write_text(f"{live.token}\n")
    assert against(live, "--token-file", str(tmp_path / "token"), "voices", cwd=tmp_path).returncode == Exit.OK
    assert against(live, "voices", cwd=tmp_path, env={"MINESTREAM_TOKEN": str(live.token)}).returncode == Exit.OK
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "token").write_text(f"{live.token}\n")  # where a server on this machine keeps it
    assert against(live, "voices", "--json", cwd=tmp_path).returncode == Exit.OK


def test_timeouts_against_a_server_that_never_answers(tmp_path: Path) -> None:
    with silent_listener() as port:
        url = f"wss://127.0.0.1:{port}/v1/stream"
        result = minestream("--url", url, "--connect-timeout", "1", "say", "hi", cwd=tmp_path)
        assert result.returncode == Exit.TIMEOUT and "--connect-timeout" in one_clean_line(result)
        overall = minestream("--url", url, "say", "hi", "--connect-timeout", "0", "--timeout", "1", cwd=tmp_path)
        assert overall.returncode == Exit.TIMEOUT and "--timeout" in one_clean_line(overall)


def test_usage_errors(tmp_path: Path) -> None:
    assert minestream("--insecure", "serve", "--port", "1", cwd=tmp_path).returncode == Exit.USAGE
    assert minestream("voices", "--no-such-flag", cwd=tmp_path).returncode == Exit.USAGE
    assert minestream("say", "   ", cwd=tmp_path).returncode == Exit.USAGE
    assert minestream("--url", "https://x/", "voices", cwd=tmp_path).returncode == Exit.USAGE
    assert minestream("--connect-timeout", "-1", "voices", cwd=tmp_path).returncode == Exit.USAGE
    missing = minestream("--ca", "nope.pem", "voices", cwd=tmp_path)
    assert missing.returncode == Exit.LOCAL and "nope.pem" in one_clean_line(missing)


# --- the voice library ---------------------------------------------------------------


def test_clone_then_list_show_rename_delete(server: LiveServer, speech_wav: Path, tmp_path: Path) -> None:
    cloned = against(server, "clone", str(speech_wav), "--name", "cli-voice", "--ref-text", "The birch canoe", "--json", cwd=tmp_path)
    assert cloned.returncode == Exit.OK, cloned.stderr
    voice = json.loads(cloned.stdout)
    assert voice["name"] == "cli-voice" and voice["kind"] == "clone" and voice["duration_ms"] > 1000
    listed = against(server, "voices", cwd=tmp_path)
    assert any(line.startswith(voice["id"]) and line.endswith("cli-voice") for line in listed.stdout.decode().splitlines())
    spoken = against(server, "say", "Spoken in the cloned voice.", "--voice", "cli-voice", "-o", "c.wav", cwd=tmp_path)
    assert spoken.returncode == Exit.OK, spoken.stderr
    assert against(server, "voices", "rename", "cli-voice", "cli renamed", cwd=tmp_path).returncode == Exit.OK
    shown = against(server, "voices", "show", voice["id"], "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["name"] == "cli renamed"
    audio = against(server, "voices", "audio", "cli renamed", "-o", "ref.wav", cwd=tmp_path)
    assert audio.returncode == Exit.OK, audio.stderr
    with wave.open(str(tmp_path / "ref.wav")) as reference:
        assert reference.getframerate() == 24000
    assert against(server, "voices", "delete", "cli renamed", cwd=tmp_path).returncode == Exit.OK
    gone = against(server, "voices", "show", voice["id"], cwd=tmp_path)
    assert gone.returncode == Exit.SERVER_ERROR and "voice_not_found" in one_clean_line(gone)


def test_clone_from_stdin_with_an_unusable_recording(server: LiveServer, tmp_path: Path) -> None:
    result = against(server, "clone", "-", "--name", "junk", cwd=tmp_path, stdin=b"not audio at all" * 100)
    assert result.returncode == Exit.SERVER_ERROR and "unsupported_audio" in one_clean_line(result)


# --- the command itself ------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = minestream("--version", cwd=tmp_path)
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.returncode == 0 and result.stdout.decode().strip() == f"minestream {expected}"


def test_every_flag_has_help() -> None:
    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if name not in DELEGATED:  # serve and bench: their own parsers' help
                        yield from walk(sub, f"{path} {name}")
            else:
                yield path, action

    actions = list(walk(parser("minestream"), "minestream"))
    assert len(actions) > 60
    assert [(path, action.dest) for path, action in actions if not action.help] == []


@pytest.mark.parametrize(("command", "expected"), [("serve", "--engine"), ("bench", "--preset")])
def test_serve_and_bench_delegate(command: str, expected: str, tmp_path: Path) -> None:
    result = minestream(command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and expected in result.stdout.decode(), result.stderr


def test_console_script_is_declared() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, _, name = pyproject["project"]["scripts"]["minestream"].partition(":")
    assert getattr(import_module(module), name) is cli_main
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["client"] and (ROOT / "client" / "py.typed").exists()


def test_main_returns_the_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--url", f"wss://127.0.0.1:{free_port()}/v1/stream", "voices"]) == Exit.UNREACHABLE
    assert capsys.readouterr().err.startswith("error: cannot reach")
