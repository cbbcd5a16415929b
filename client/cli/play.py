"""``--play``: speech to this machine's speakers, through a player program found on PATH.

A player reads the audio on its stdin as it arrives, so playback starts with
the first chunk. Programs are tried in order: ``paplay`` (PulseAudio, and
PipeWire through pipewire-pulse), ALSA's ``aplay``, ffmpeg's ``ffplay``;
macOS's ``afplay`` cannot read a pipe, so it plays a temporary file once
all the audio is in. ``--player "CMD ARGS"`` names another program that reads
16-bit mono WAV on stdin. Writing to the player runs on its own thread: a
player takes audio only as fast as it plays it, and the event loop must keep
receiving meanwhile.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..wav import wav_header
from .exits import LocalError


@dataclass(frozen=True)
class PlayerCommand:
    argv: list[str]
    wav: bool
    """Feed a WAV stream (else raw 16-bit mono PCM)."""
    whole_file: bool = False
    """The program plays a file once it is complete (afplay)."""


def find_player(sample_rate: int, override: str | None = None) -> PlayerCommand:
    """The player to use, or ``LocalError`` saying what to install."""
    if override:
        argv = shlex.split(override)
        if not argv or shutil.which(argv[0]) is None:
            raise LocalError(f"--player {override!r}: no such program")
        return PlayerCommand(argv, wav=True)
    rate = str(sample_rate)
    candidates = (
        ("paplay", PlayerCommand(["paplay", "--raw", "--format=s16le", f"--rate={rate}", "--channels=1"], wav=False)),
        ("aplay", PlayerCommand(["aplay", "-q", "-t", "raw", "-f", "S16_LE", "-r", rate, "-c", "1", "-"], wav=False)),
        ("ffplay", PlayerCommand(["ffplay", "-nodisp", "-autoexit", "-loglevel", "error", "-i", "pipe:0"], wav=True)),
        ("afplay", PlayerCommand(["afplay"], wav=True, whole_file=True)),
    )
    for program, command in candidates:
        path = shutil.which(program)
        if path is not None:
            return PlayerCommand([path, *command.argv[1:]], command.wav, command.whole_file)
    names = ", ".join(name for name, _ in candidates)
    raise LocalError(f"--play: no audio player found (looked for {names}); install one (e.g. pulseaudio-utils or alsa-utils), "
                     "name one with --player, or write a file with -o")


class Player:
    """A running player program; ``write`` PCM as it comes, then ``finish``."""

    def __init__(self, command: PlayerCommand, sample_rate: int) -> None:
        self.command = command
        self.sample_rate = sample_rate
        self._file: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()
        if command.whole_file:
            self._file = tempfile.NamedTemporaryFile(suffix=".wav", delete=False)  # noqa: SIM115 - closed in finish
            self._file.write(wav_header(sample_rate))
        else:
            self._process = self._start(command.argv)
            if command.wav:
                self._feed(wav_header(sample_rate))

    async def write(self, pcm_s16le: bytes) -> None:
        async with self._lock:  # chunks in order, one write at a time
            await asyncio.to_thread(self._feed, pcm_s16le)

    async def finish(self) -> None:
        """Until the player has played everything."""
        await asyncio.to_thread(self._finish)

    def stop(self) -> None:
        """Stop now (an error or Ctrl-C)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._file is not None:
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)

    def _start(self, argv: list[str], *, stdin: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL)
        except OSError as exc:
            raise LocalError(f"--play: cannot start {argv[0]}: {exc.strerror}") from None

    def _feed(self, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)
            return
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(data)
            self._process.stdin.flush()
        except BrokenPipeError:
            raise LocalError(f"--play: {self.command.argv[0]} stopped ({self._exit_status()})") from None

    def _finish(self) -> None:
        if self._file is not None:
            self._finish_file()
            return
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        if self._process.wait() != 0:
            raise LocalError(f"--play: {self.command.argv[0]} failed ({self._exit_status()})")

    def _finish_file(self) -> None:
        assert self._file is not None
        size = self._file.tell() - len(wav_header(self.sample_rate))
        self._file.seek(0)
        self._file.write(wav_header(self.sample_rate, size))
        self._file.close()
        try:
            self._process = self._start([*self.command.argv, self._file.name], stdin=subprocess.DEVNULL)
            if self._process.wait() != 0:
                raise LocalError(f"--play: {self.command.argv[0]} failed ({self._exit_status()})")
        finally:
            Path(self._file.name).unlink(missing_ok=True)

    def _exit_status(self) -> str:
        code = None if self._process is None else self._process.poll()
        return "still running" if code is None else f"exit status {code}"
